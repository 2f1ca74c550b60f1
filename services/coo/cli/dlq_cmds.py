"""`coo dlq list`, `coo dlq replay ID`: dead letters, and their replay."""

from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table

from coo.cli.client import Api
from coo.cli.output import console, emit_json
from coo.cli.util import truncate

app = typer.Typer(help="Dead letters: messages that could never be processed.", no_args_is_help=True)


@app.command("list")
def dlq_list(limit: int = typer.Option(100, "--limit", min=1, max=1000, help="The newest N dead letters."),
             json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """The dead letters, oldest first, with their reason."""
    with Api() as api:
        body = api.get("/v1/dlq", limit=limit)
    if json_out:
        emit_json(body)
        return
    rows = body["dead_letters"]
    if not rows:
        console.print("the dead-letter queue is empty")
        return
    table = Table(title=f"dead letters ({len(rows)})", title_justify="left")
    for col in ("id", "kind", "stream", "seq", "consumer", "deliveries", "reason", "at"):
        table.add_column(col)
    for d in rows:
        table.add_row(str(d["dlq_id"]), d["kind"], d["stream"], str(d["stream_seq"]), d["consumer"],
                      str(d["deliveries"]), escape(truncate(d["reason"], 70)), str(d.get("at") or ""))
    console.print(table)
    console.print("[dim]replay one, once its cause is fixed: coo dlq replay ID[/dim]")


@app.command("replay")
def dlq_replay(dlq_id: int = typer.Argument(..., min=1, metavar="ID", help="The dead letter's id (coo dlq list)."),
               json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Publish a dead letter's original message again (fresh message id) and remove the dead letter."""
    with Api() as api:
        body = api.post(f"/v1/dlq/{dlq_id}/replay", hints={404: "list the dead letters with `coo dlq list`"})
    if json_out:
        emit_json(body)
        return
    console.print(f"dead letter {dlq_id} replayed: {body.get('subject')} (from {body.get('stream')} "
                  f"seq {body.get('stream_seq')}); if it is still bad it returns with its reason (coo dlq list)")
