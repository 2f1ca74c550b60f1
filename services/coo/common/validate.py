"""Checks of incoming protobuf messages, one wording for every service.

A message that fails a check raises :class:`~coo.common.bus.InvalidMessage`: the consumer terminates it
to the DLQ with the message as its reason (a request/reply service answers it as a refusal), never retries it.

protovalidate (buf) would move these rules into the ``.proto`` files, at the price of annotated
contracts, regenerated code, a CEL runtime in every service and its own wording of every reason; the
rules here are few (required fields, bounded ids and counts), so they stay in Python::

    validate.require(result, "mission_id", "task_id", what="agent result")
    validate.check_id(req.reservation_id, "reservation_id")
    validate.check_count(req.input_tokens, "input_tokens", maximum=MAX_TOKENS)
"""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from coo.common.bus import InvalidMessage

#: the longest id a message may carry (KV keys, subjects and log lines stay bounded)
MAX_ID = 256


def is_unset(msg: Message, field: str) -> bool:
    """``field`` of ``msg`` holds nothing: an empty or blank string, zero (a number, an enum's
    UNSPECIFIED), an absent sub-message, an empty list or map."""
    fd = msg.DESCRIPTOR.fields_by_name[field]
    if fd.type == FieldDescriptor.TYPE_MESSAGE and not fd.is_repeated:
        return not msg.HasField(field)
    value = getattr(msg, field)
    if isinstance(value, str):
        return not value.strip()
    return not value


def require(msg: Message, *fields: str, what: str) -> None:
    """Every one of ``fields`` is set, or InvalidMessage("{what} without a or b")."""
    if any(is_unset(msg, f) for f in fields):
        raise InvalidMessage(f"{what} without {' or '.join(fields)}")


def check_id(value: str, name: str, max_len: int = MAX_ID) -> None:
    """A required id: not blank, at most ``max_len`` characters, no control characters."""
    if not value or not value.strip():
        raise InvalidMessage(f"{name} is required")
    if len(value) > max_len:
        raise InvalidMessage(f"{name} longer than {max_len} characters")
    if any(ord(c) < 32 for c in value):
        raise InvalidMessage(f"{name} contains control characters")


def check_count(value: float, name: str, maximum: float | None = None) -> None:
    """A count or duration: not negative, and not above ``maximum`` (an implausible value) if given."""
    if value < 0:
        raise InvalidMessage(f"{name} must not be negative (got {value})")
    if maximum is not None and value > maximum:
        raise InvalidMessage(f"{name} is implausibly large (got {value})")
