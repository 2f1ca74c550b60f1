"""coo.common.validate: the checks of incoming protobuf messages, and their wording."""

from __future__ import annotations

import pytest

from coo.common import validate
from coo.common.bus import InvalidMessage
from coo.v1 import agent_pb2, budget_pb2, common_pb2, sandbox_pb2


def test_unset_fields_by_kind():
    task = agent_pb2.AgentTask(task_id="t-1", goal="   ", role=common_pb2.ROLE_QA)
    assert not validate.is_unset(task, "task_id") and not validate.is_unset(task, "role")
    assert validate.is_unset(task, "mission_id")            # empty string
    assert validate.is_unset(task, "goal")                  # blank string
    assert validate.is_unset(task, "sandbox_result")        # absent sub-message
    assert validate.is_unset(task, "workspace")             # empty repeated field
    assert validate.is_unset(agent_pb2.AgentTask(), "role")  # an enum's UNSPECIFIED
    task.sandbox_result.CopyFrom(sandbox_pb2.SandboxResult())
    assert not validate.is_unset(task, "sandbox_result")    # present, even if empty


def test_require_names_every_required_field():
    validate.require(agent_pb2.AgentResult(mission_id="m", task_id="t"), "mission_id", "task_id", what="agent result")
    with pytest.raises(InvalidMessage, match=r"^agent result without mission_id or task_id$"):
        validate.require(agent_pb2.AgentResult(mission_id="m"), "mission_id", "task_id", what="agent result")
    with pytest.raises(InvalidMessage, match=r"^AgentTask t-1 without goal$"):
        validate.require(agent_pb2.AgentTask(task_id="t-1"), "goal", what="AgentTask t-1")


@pytest.mark.parametrize(("value", "reason"), [
    ("", "reservation_id is required"),
    ("  ", "reservation_id is required"),
    ("x" * 257, "reservation_id longer than 256 characters"),
    ("a\nb", "reservation_id contains control characters"),
])
def test_check_id(value, reason):
    with pytest.raises(InvalidMessage) as exc:
        validate.check_id(value, "reservation_id")
    assert str(exc.value) == reason


def test_check_count():
    validate.check_count(0, "input_tokens", maximum=10)
    validate.check_count(10, "input_tokens", maximum=10)
    with pytest.raises(InvalidMessage, match=r"^input_tokens must not be negative \(got -1\)$"):
        validate.check_count(-1, "input_tokens", maximum=10)
    with pytest.raises(InvalidMessage, match=r"^input_tokens is implausibly large \(got 11\)$"):
        validate.check_count(11, "input_tokens", maximum=10)
    with pytest.raises(InvalidMessage, match=r"^ttl_seconds must not be negative \(got -5\)$"):
        validate.check_count(budget_pb2.ReserveRequest(ttl_seconds=-5).ttl_seconds, "ttl_seconds")
