"""`coo budget`: spent, reserved and remaining per budget scope."""

from __future__ import annotations

import typer
from rich.table import Table

from coo.cli.client import Api
from coo.cli.output import console, emit_json
from coo.cli.util import usd


def budget_table(scopes: list[dict], title: str = "budget") -> Table:
    table = Table(title=title, title_justify="left")
    for col, right in (("scope", False), ("key", False), ("limit", True), ("spent", True), ("reserved", True),
                       ("remaining", True), ("used", True), ("tokens spent", True), ("open reservations", True)):
        table.add_column(col, justify="right" if right else "left")
    for sc in scopes:
        limit = sc["limit_usd"]
        used = f"{(sc['spent_usd'] + sc['reserved_usd']) / limit * 100:.1f}%" if limit else "—"
        colour = "red" if limit and sc["remaining_usd"] is not None and sc["remaining_usd"] <= 0 else (
            "yellow" if limit and (sc["remaining_usd"] or 0) < 0.1 * limit else "")
        remaining = usd(sc["remaining_usd"]) if limit else "no limit"
        table.add_row(sc["scope"], sc["key"], usd(limit) if limit else "none", usd(sc["spent_usd"]),
                      usd(sc["reserved_usd"]), f"[{colour}]{remaining}[/{colour}]" if colour else remaining, used,
                      str(sc["spent_tokens"]), str(sc["reservations"]))
    return table


def budget(mission: str | None = typer.Option(None, "--mission", help="Also this mission's scope."),
           json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """Spent, reserved and remaining per budget scope (mission, daily, monthly)."""
    with Api() as api:
        body = api.get("/v1/budget", mission_id=mission)
    if json_out:
        emit_json(body)
        return
    console.print(budget_table(body["scopes"]))


app = typer.Typer()
app.command()(budget)
