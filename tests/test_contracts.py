"""The protobuf contracts of the bus (proto/coo/v1) and their generated code (coo.v1)."""

from __future__ import annotations

import filecmp
import importlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from coo.v1 import (
    agent_pb2,
    budget_pb2,
    common_pb2,
    control_pb2,
    dlq_pb2,
    mission_pb2,
    sandbox_pb2,
    timeline_pb2,
)

ROOT = Path(__file__).resolve().parents[1]
PROTO_DIR = ROOT / "proto" / "coo" / "v1"
GEN_DIR = ROOT / "services" / "coo" / "v1"
GEN_SCRIPT = ROOT / "scripts" / "gen_proto.sh"
BUF_SCRIPT = ROOT / "scripts" / "buf_lint.sh"

MODULES: list[ModuleType] = [
    agent_pb2,
    budget_pb2,
    common_pb2,
    control_pb2,
    dlq_pb2,
    mission_pb2,
    sandbox_pb2,
    timeline_pb2,
]

# Every message the other services rely on. Renaming one of these is a breaking change.
EXPECTED_MESSAGES = {
    "common": {"Usage", "File"},
    "mission": {"PlannedTask", "Mission", "WorkspaceVersion"},
    "agent": {"AgentTask", "AgentResult", "Verdict"},
    "budget": {
        "ReserveRequest",
        "ReserveReply",
        "SettleRequest",
        "SettleReply",
        "ReleaseRequest",
        "ReleaseReply",
        "SetLimitRequest",
        "SetLimitReply",
        "BudgetStatusRequest",
        "ScopeStatus",
        "BudgetStatusReply",
    },
    "sandbox": {"SandboxLimits", "SandboxRun", "SandboxResult"},
    "control": {"Control"},
    "timeline": {"TimelineEvent"},
    "dlq": {"DeadLetter"},
}
EXPECTED_ENUMS = {
    "common": {"Role"},
    "mission": {"MissionStatus", "TaskStatus"},
    "agent": {"ErrorKind"},
    "budget": {"BudgetScope"},
    "sandbox": {"SandboxOutcome"},
    "control": {"ControlAction"},
}


def _message_classes() -> list[type[Message]]:
    classes = []
    for module in MODULES:
        for name in module.DESCRIPTOR.message_types_by_name:
            classes.append(getattr(module, name))
    return classes


ALL_MESSAGES = _message_classes()


# --------------------------------------------------------------------------- filling


def _scalar(field: FieldDescriptor, n: int) -> object:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return f"{field.name}-{n} ünï"
    if t == FieldDescriptor.TYPE_BYTES:
        return f"{field.name}-{n}".encode() + b"\x00\xff"
    if t == FieldDescriptor.TYPE_BOOL:
        return True
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.5 + n
    if t == FieldDescriptor.TYPE_ENUM:
        values = field.enum_type.values
        return values[-1 - (n % (len(values) - 1))].number  # never the zero value
    return 7 + n  # every integer type


def _fill(msg: Message, depth: int = 0) -> Message:
    """Set every field of msg (recursively, maps and repeated fields with two entries)."""
    for field in msg.DESCRIPTOR.fields:
        value = getattr(msg, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            key_f = field.message_type.fields_by_name["key"]
            val_f = field.message_type.fields_by_name["value"]
            for n in range(2):
                key = _scalar(key_f, n)
                if val_f.message_type is not None:
                    _fill(value[key], depth + 1)
                else:
                    value[key] = _scalar(val_f, n)
        elif field.is_repeated:
            for n in range(2):
                if field.message_type is not None:
                    _fill(value.add(), depth + 1)
                else:
                    value.append(_scalar(field, n))
        elif field.message_type is not None:
            if field.message_type.full_name == "google.protobuf.Timestamp":
                value.CopyFrom(Timestamp(seconds=1_795_000_000 + depth, nanos=123_000_000))
            elif depth < 4:
                _fill(value, depth + 1)
            else:
                value.SetInParent()
        else:
            setattr(msg, field.name, _scalar(field, depth))
    return msg


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.DESCRIPTOR.full_name)
def test_round_trip_every_message(cls: type[Message]) -> None:
    msg = _fill(cls())
    # every field is set, so a new field cannot escape the round trip
    assert len(msg.ListFields()) == len(cls.DESCRIPTOR.fields)

    data = msg.SerializeToString(deterministic=True)
    parsed = cls.FromString(data)
    assert parsed == msg
    assert parsed.SerializeToString(deterministic=True) == data

    # the REST API and the CLI's --json use the JSON mapping
    text = json_format.MessageToJson(msg)
    assert json_format.Parse(text, cls()) == msg

    # an empty message survives too (all defaults)
    assert cls.FromString(cls().SerializeToString()) == cls()


def test_round_trip_realistic_mission() -> None:
    ts = Timestamp()
    ts.FromJsonString("2026-11-21T10:00:00.250Z")
    mission = mission_pb2.Mission(
        mission_id="m-1",
        goal="write a function that parses ISO dates, with tests",
        status=mission_pb2.MISSION_STATUS_PAUSED,
        paused_from=mission_pb2.MISSION_STATUS_EXECUTING,
        created_at=ts,
        budget_usd=2.5,
        budget_tokens=100_000,
        require_approval=True,
        max_retries=2,
        tasks=[
            mission_pb2.PlannedTask(
                task_id="t1",
                title="parser",
                status=mission_pb2.TASK_STATUS_IN_PROGRESS,
                attempts=2,
                last_feedback="handle time zones",
            )
        ],
        current_task=0,
        retries=1,
        usage=common_pb2.Usage(input_tokens=1200, output_tokens=300, cost_usd=0.0123, calls=3),
        trace_context={"traceparent": "00-" + "a" * 32 + "-" + "b" * 16 + "-01"},
        pending_work=1,
        labels={"team": "dates"},
        artifacts=[common_pb2.File(name="iso.py", content="def parse(s): ...\n")],
        artifact_command=["python", "-m", "pytest", "-q"],
        last_sandbox_result=sandbox_pb2.SandboxResult(
            run_id="r1",
            outcome=sandbox_pb2.SANDBOX_OUTCOME_FAILED,
            exit_code=1,
            stderr="AssertionError",
            limits=sandbox_pb2.SandboxLimits(timeout_seconds=10, memory_mb=256),
        ),
    )
    parsed = mission_pb2.Mission.FromString(mission.SerializeToString())
    assert parsed == mission
    assert parsed.tasks[0].status == mission_pb2.TASK_STATUS_IN_PROGRESS
    assert parsed.trace_context["traceparent"].startswith("00-")
    assert parsed.last_sandbox_result.limits.memory_mb == 256
    assert parsed.created_at.ToJsonString() == "2026-11-21T10:00:00.250Z"


def test_round_trip_agent_task_and_result() -> None:
    task = agent_pb2.AgentTask(
        task_id="m-1/t1/qa/2",
        mission_id="m-1",
        role=common_pb2.ROLE_QA,
        attempt=2,
        task=mission_pb2.PlannedTask(task_id="t1", title="parser"),
        artifact_files=[common_pb2.File(name="iso.py", content="x = 1\n")],
        artifact_command=["python", "iso.py"],
        sandbox_result=sandbox_pb2.SandboxResult(outcome=sandbox_pb2.SANDBOX_OUTCOME_OK),
        max_output_tokens=512,
    )
    assert agent_pb2.AgentTask.FromString(task.SerializeToString()) == task

    result = agent_pb2.AgentResult(
        task_id=task.task_id,
        mission_id="m-1",
        role=common_pb2.ROLE_QA,
        attempt=2,
        ok=True,
        error_kind=agent_pb2.ERROR_KIND_NONE,
        verdict=agent_pb2.Verdict(passed=True, feedback="good", score=0.9),
        usage=common_pb2.Usage(input_tokens=10, output_tokens=5, cost_usd=0.001),
        model="mock-small",
        duration_seconds=0.25,
    )
    parsed = agent_pb2.AgentResult.FromString(result.SerializeToString())
    assert parsed == result
    assert parsed.verdict.passed and parsed.HasField("verdict")


def test_set_limit_optional_fields_have_presence() -> None:
    req = budget_pb2.SetLimitRequest(scope=budget_pb2.BUDGET_SCOPE_DAILY, limit_usd=0.0)
    parsed = budget_pb2.SetLimitRequest.FromString(req.SerializeToString())
    assert parsed.HasField("limit_usd")  # 0 = "remove the limit", distinct from unset
    assert not parsed.HasField("limit_tokens")


def test_undecodable_bytes_raise_decode_error() -> None:
    # consumers terminate such messages to the DLQ; they must be able to tell
    with pytest.raises(DecodeError):
        mission_pb2.Mission.FromString(b"\xff\xff\xff\xff")


def test_unknown_enum_value_is_kept() -> None:
    # proto3 enums are open: a newer producer's value survives an older consumer
    raw = control_pb2.Control(mission_id="m").SerializeToString() + b"\x18\x63"  # field 3 (action) = 99
    parsed = control_pb2.Control.FromString(raw)
    assert parsed.action == 99
    assert parsed.action not in control_pb2.ControlAction.values()


# --------------------------------------------------------------------------- shape and style


def test_expected_messages_and_enums_exist() -> None:
    for module in MODULES:
        stem = module.__name__.rsplit(".", 1)[1].removesuffix("_pb2")
        assert set(module.DESCRIPTOR.message_types_by_name) == EXPECTED_MESSAGES[stem], stem
        assert set(module.DESCRIPTOR.enum_types_by_name) == EXPECTED_ENUMS.get(stem, set()), stem
        assert module.DESCRIPTOR.package == "coo.v1"


def _enums() -> list[EnumDescriptor]:
    return [e for m in MODULES for e in m.DESCRIPTOR.enum_types_by_name.values()]


@pytest.mark.parametrize("enum", _enums(), ids=lambda e: e.name)
def test_enum_style(enum: EnumDescriptor) -> None:
    # buf STANDARD: ENUM_ZERO_VALUE_SUFFIX and ENUM_VALUE_PREFIX (checked here without buf too)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    assert enum.values[0].number == 0 and enum.values[0].name == prefix + "UNSPECIFIED"
    for value in enum.values:
        assert value.name.startswith(prefix), value.name


def _all_descriptors(desc: Descriptor) -> list[Descriptor]:
    out = [desc]
    for nested in desc.nested_types:
        if not nested.GetOptions().map_entry:
            out.extend(_all_descriptors(nested))
    return out


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.DESCRIPTOR.full_name)
def test_field_names_are_lower_snake_case(cls: type[Message]) -> None:
    for desc in _all_descriptors(cls.DESCRIPTOR):
        for field in desc.fields:
            assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", field.name), field.full_name


# --------------------------------------------------------------------------- generated code


def test_every_proto_has_a_generated_module() -> None:
    protos = sorted(p.stem for p in PROTO_DIR.glob("*.proto"))
    assert protos, f"no .proto files in {PROTO_DIR}"
    for stem in protos:
        assert (GEN_DIR / f"{stem}_pb2.py").is_file(), f"{stem}.proto has no {stem}_pb2.py: run make proto"
        assert (GEN_DIR / f"{stem}_pb2.pyi").is_file(), f"{stem}.proto has no {stem}_pb2.pyi: run make proto"
        module = importlib.import_module(f"coo.v1.{stem}_pb2")
        assert module.DESCRIPTOR.name == f"coo/v1/{stem}.proto"
    generated = sorted(p.name.removesuffix("_pb2.py") for p in GEN_DIR.glob("*_pb2.py"))
    assert generated == protos, "generated modules without a .proto: run make proto"
    assert sorted(m.__name__.rsplit(".", 1)[1].removesuffix("_pb2") for m in MODULES) == protos


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    pytest.importorskip("grpc_tools.protoc", reason="grpcio-tools not installed (pip install -e '.[dev]')")
    pytest.importorskip("mypy_protobuf", reason="mypy-protobuf not installed (pip install -e '.[dev]')")
    env = {**os.environ, "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", str(GEN_SCRIPT), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False, timeout=120,
    )
    assert proc.returncode == 0, f"gen_proto.sh failed:\n{proc.stdout}\n{proc.stderr}"

    fresh_dir = tmp_path / "coo" / "v1"
    fresh = sorted(p.name for p in fresh_dir.iterdir())
    checked_in = sorted(p.name for p in GEN_DIR.iterdir() if p.name.endswith(("_pb2.py", "_pb2.pyi")))
    assert fresh == checked_in, f"generated files differ from services/coo/v1 ({checked_in} vs {fresh}): run make proto"
    stale = [name for name in fresh if not filecmp.cmp(fresh_dir / name, GEN_DIR / name, shallow=False)]
    assert not stale, f"generated code is stale: {stale}: run make proto"


# --------------------------------------------------------------------------- buf


def _buf_available() -> bool:
    version = re.search(r'BUF_VERSION="\$\{BUF_VERSION:-([^}]+)\}"', BUF_SCRIPT.read_text())
    assert version, "scripts/buf_lint.sh lost its pinned BUF_VERSION"
    cache = Path(os.environ.get("COO_TOOLS_CACHE", Path.home() / ".cache" / "coo" / "tools"))
    buf = cache / f"buf-{os.environ.get('BUF_VERSION', version.group(1))}" / "buf"
    return buf.is_file() or shutil.which("go") is not None


@pytest.mark.timeout(900)  # the first run installs buf with `go install`
@pytest.mark.skipif(not _buf_available(), reason="buf is not cached and Go is not on PATH to install it")
def test_buf_lint() -> None:
    proc = subprocess.run(
        ["bash", str(BUF_SCRIPT)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False, timeout=880,
    )
    assert proc.returncode == 0, f"buf lint/breaking failed:\n{proc.stdout}\n{proc.stderr}"
