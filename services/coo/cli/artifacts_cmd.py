"""`coo artifacts ID`: a mission's result, its workspace, listed or written to a directory."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from coo.cli.client import Api
from coo.cli.output import CliError, console, emit_json
from coo.common.workspace import WorkspaceError, check_file_name


def _extract(data: bytes, out: Path) -> list[str]:
    """The tarball's files written flat into ``out`` (each name checked: no path, no ``..``)."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if not member.isfile():
                continue
            name = member.name.rsplit("/", 1)[-1]
            try:
                check_file_name(name)
            except WorkspaceError as exc:
                raise CliError(f"the workspace holds a file this command will not write: {exc}") from None
            source = tar.extractfile(member)
            if source is None:
                continue
            (out / name).write_bytes(source.read())
            written.append(name)
    return sorted(written)


_OUT_OPTION = typer.Option(None, "--out", "-o", file_okay=False, help="Write the files into this directory.")


def artifacts(mission_id: str = typer.Argument(..., help="The mission id."),
              out: Path | None = _OUT_OPTION,
              candidate: bool = typer.Option(False, "--candidate",
                                             help="The current (or last) attempt's files instead of the workspace "
                                                  "of passed tasks."),
              json_out: bool = typer.Option(False, "--json", help="One JSON object on stdout.")) -> None:
    """A mission's workspace: every file its passed tasks produced (its result once it is final)."""
    mission_id = mission_id.strip()
    if not mission_id:
        raise typer.BadParameter("a mission id is required (see `coo missions`)")
    flag = "true" if candidate else None
    with Api() as api:
        view = api.get(f"/v1/missions/{mission_id}/workspace", candidate=flag)
        written: list[str] = []
        if out is not None:
            written = _extract(api.get_bytes(f"/v1/missions/{mission_id}/workspace.tar.gz", candidate=flag), out)
    if json_out:
        emit_json({**view, **({"written_to": str(out), "written": written} if out is not None else {})})
        return
    state = "final" if view["final"] else f"mission {view['status']}, not final"
    if not view["files"]:
        console.print(f"mission {mission_id} has no files in its {'candidate' if candidate else 'workspace'} yet "
                      f"({state})")
        return
    console.print(f"{mission_id} {'candidate' if candidate else 'workspace'} ({state}): {len(view['files'])} "
                  f"file(s), {view['bytes']} bytes")
    table = Table()
    table.add_column("file", no_wrap=True)
    table.add_column("bytes", justify="right")
    table.add_column("last changed by", no_wrap=True)
    changed_by: dict[str, str] = {}
    for v in view["versions"]:
        if v["outcome"] == "passed" or candidate:
            for name in v["changed"]:
                changed_by[name] = f"{v['task_id'].rsplit('.', 1)[-1]} attempt {v['attempt']}"
    for f in view["files"]:
        table.add_row(escape(f["name"]), str(f["bytes"]), changed_by.get(f["name"], ""))
    console.print(table)
    if view["command"]:
        console.print(f"last command: {escape(' '.join(view['command']))}")
    if out is not None:
        console.print(f"wrote {len(written)} file(s) to {escape(str(out))}")


app = typer.Typer()
app.command()(artifacts)
