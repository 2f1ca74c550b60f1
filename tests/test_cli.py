"""The `coo` command line: help, and the scrubber as a pipe."""

from __future__ import annotations

import subprocess
import sys

COO = [sys.executable, "-m", "coo.cli"]


def test_help_lists_the_commands():
    res = subprocess.run([*COO, "--help"], capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 0
    for command in ("up", "down", "status", "run", "scrub"):
        assert f" {command} " in res.stdout, command


def test_scrub_is_a_pipe():
    text = ("starting worker\n"
            "aws key AKIAIOSFODNN7EXAMPLE used by job 42\n"
            "connect postgres://app:hunter2hunter2@db.internal:5432/app\n"
            "trace 4bf92f3577b34da6a3ce929d0e0e4736 ok\n")
    res = subprocess.run([*COO, "scrub"], input=text, capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0] == "starting worker"
    assert "AKIAIOSFODNN7EXAMPLE" not in res.stdout and "[REDACTED" in lines[1] and "job 42" in lines[1]
    assert "hunter2hunter2" not in res.stdout and "db.internal:5432" in lines[2]
    assert lines[3] == "trace 4bf92f3577b34da6a3ce929d0e0e4736 ok"


def test_unknown_command_is_a_usage_error():
    res = subprocess.run([*COO, "explode"], capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 2 and "No such command" in res.stderr
