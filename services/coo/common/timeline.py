"""Timeline events: one stream subject per mission (``coo.timeline.<mission_id>``).

Every service records what it does to a mission through :func:`record`; event types can be
switched off by configuration (``COO_DISABLED_EVENTS``), except those that change status.
"""

from __future__ import annotations

import uuid

from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace

from coo.common import topology
from coo.common.bus import Bus
from coo.common.scrub import scrub_text
from coo.common.telemetry import get_logger
from coo.v1 import mission_pb2, timeline_pb2

log = get_logger("coo.timeline")

# Never switched off: an operator must always be able to follow a mission's state.
ALWAYS_ON = frozenset({"mission.created", "status.changed", "mission.completed", "mission.failed",
                       "mission.cancelled", "budget.exceeded"})


def new_event(mission_id: str, type_: str, message: str, *, service: str,
              status: mission_pb2.MissionStatus.ValueType = mission_pb2.MISSION_STATUS_UNSPECIFIED, level: str = "info",
              attributes: dict[str, str] | None = None) -> timeline_pb2.TimelineEvent:
    at = Timestamp()
    at.GetCurrentTime()
    # The timeline is a sink like any log: what it says passes the scrubber first.
    event = timeline_pb2.TimelineEvent(
        event_id=uuid.uuid4().hex, mission_id=mission_id, type=type_, at=at, service=service,
        message=scrub_text(message), status=status, level=level,
        attributes={k: scrub_text(str(v)) for k, v in (attributes or {}).items()},
    )
    ctx = trace.get_current_span().get_span_context()
    if ctx.is_valid:
        event.trace_id = format(ctx.trace_id, "032x")
        event.span_id = format(ctx.span_id, "016x")
    return event


async def record(bus: Bus, mission_id: str, type_: str, message: str, *,
                 status: mission_pb2.MissionStatus.ValueType = mission_pb2.MISSION_STATUS_UNSPECIFIED,
                 level: str = "info", attributes: dict[str, str] | None = None, event_id: str | None = None) -> None:
    """Publish one timeline event (never raises: a lost timeline line must not fail a mission)."""
    if type_ not in ALWAYS_ON and type_ in bus.settings.disabled_event_types():
        return
    event = new_event(mission_id, type_, message, service=bus.service, status=status, level=level,
                      attributes=attributes)
    if event_id:
        event.event_id = event_id
    try:
        await bus.publish(topology.timeline_subject(mission_id), event, msg_id=event.event_id,
                          mission_id=mission_id)
    except Exception as exc:  # noqa: BLE001 - the timeline is best effort: a mission never fails for it
        log.warning("timeline event not recorded", type=type_, error=str(exc) or type(exc).__name__)


async def read(bus: Bus, mission_id: str, *, limit: int = 1000) -> list[timeline_pb2.TimelineEvent]:
    """All events of a mission, oldest first (an ordered ephemeral consumer on its subject)."""
    events: list[timeline_pb2.TimelineEvent] = []
    sub = await bus.js.subscribe(topology.timeline_subject(mission_id), ordered_consumer=True,
                                 stream=topology.STREAM_TIMELINE)
    try:
        info = await bus.js.stream_info(topology.STREAM_TIMELINE, subjects_filter=topology.timeline_subject(mission_id))
        expected = sum((info.state.subjects or {}).values()) if info.state.subjects else 0
        while len(events) < min(expected, limit):
            msg = await sub.next_msg(timeout=2.0)
            event = timeline_pb2.TimelineEvent()
            event.ParseFromString(msg.data)
            events.append(event)
    except Exception as exc:  # noqa: BLE001 - a partial timeline beats none
        log.debug("timeline read stopped early", error=str(exc) or type(exc).__name__)
    finally:
        await sub.unsubscribe()
    return events
