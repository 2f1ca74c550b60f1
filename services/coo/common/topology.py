"""Every subject, stream, durable consumer and KV bucket of COO, declared in one place.

``Bus.ensure_topology()`` (:mod:`coo.common.declare`) creates or updates all of them idempotently,
so any service can start first. Work streams keep messages (limits retention, bounded by age and
size) so that a dead-lettered message can be read back by its sequence and replayed. Every stream
and bucket has ``COO_NATS_REPLICAS`` copies (1 on one server, 3 on a cluster of three); consumers
take their stream's. :data:`SCOPES` says which part each service's NATS user declares.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)

from coo.common.config import CommonSettings

# ------------------------------------------------------------------------- subjects
TASKS = "coo.tasks"                  # coo.tasks.<role>        AgentTask
AGENT_RESULTS = "coo.results.agent"  # AgentResult
SANDBOX_RUNS = "coo.sandbox.runs"    # SandboxRun
SANDBOX_RESULTS = "coo.results.sandbox"  # SandboxResult
CONTROL = "coo.control"              # coo.control.<mission_id> Control
TIMELINE = "coo.timeline"            # coo.timeline.<mission_id> TimelineEvent
BUDGET = "coo.budget"                # coo.budget.<verb>       request/reply (nats.micro)

ADVISORY_MAX_DELIVERIES = "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES"
ADVISORY_TERMINATED = "$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED"

# Subjects whose last token is a mission id: spans are named after the template instead,
# so span names (and the metric labels derived from them) stay bounded.
_PER_MISSION_PREFIXES = (TIMELINE + ".", CONTROL + ".")


def task_subject(role: str) -> str:
    return f"{TASKS}.{role}"


def timeline_subject(mission_id: str) -> str:
    return f"{TIMELINE}.{mission_id}"


def control_subject(mission_id: str) -> str:
    return f"{CONTROL}.{mission_id}"


def subject_template(subject: str) -> str:
    for prefix in _PER_MISSION_PREFIXES:
        if subject.startswith(prefix):
            return prefix + "{mission_id}"
    return subject


# -------------------------------------------------------------------------- streams
STREAM_TASKS = "COO_TASKS"
STREAM_RESULTS = "COO_RESULTS"
STREAM_SANDBOX = "COO_SANDBOX"
STREAM_CONTROL = "COO_CONTROL"
STREAM_TIMELINE = "COO_TIMELINE"
STREAM_DLQ = "COO_DLQ"

WORK_STREAMS = (STREAM_TASKS, STREAM_RESULTS, STREAM_SANDBOX, STREAM_CONTROL)

BUCKET_MISSIONS = "coo_missions"
BUCKET_BUDGET = "coo_budget"
BUCKET_SANDBOX_RUNS = "coo_sandbox_runs"


def streams(settings: CommonSettings) -> list[StreamConfig]:
    def work(name: str, subjects: list[str], description: str) -> StreamConfig:
        return StreamConfig(
            name=name, description=description, subjects=subjects,
            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
            max_age=settings.work_max_age_seconds, max_bytes=1 << 30, discard=DiscardPolicy.OLD,
            duplicate_window=120.0, max_msg_size=settings.max_payload_bytes * 2,
            num_replicas=settings.nats_replicas,
        )

    return [
        work(STREAM_TASKS, [f"{TASKS}.>"], "agent tasks by role"),
        work(STREAM_RESULTS, [AGENT_RESULTS, SANDBOX_RESULTS], "agent and sandbox results"),
        work(STREAM_SANDBOX, [SANDBOX_RUNS], "sandbox run requests"),
        work(STREAM_CONTROL, [f"{CONTROL}.>"], "mission control messages"),
        StreamConfig(
            name=STREAM_TIMELINE, description="per-mission timeline", subjects=[f"{TIMELINE}.>"],
            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
            max_age=settings.timeline_max_age_seconds, max_bytes=settings.timeline_max_bytes,
            discard=DiscardPolicy.OLD, duplicate_window=120.0, num_replicas=settings.nats_replicas,
        ),
        StreamConfig(
            name=STREAM_DLQ, description="dead letters: max-deliveries and terminated advisories",
            subjects=[f"{ADVISORY_MAX_DELIVERIES}.>", f"{ADVISORY_TERMINATED}.>"],
            retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
            max_age=settings.dlq_max_age_seconds, max_bytes=settings.dlq_max_bytes, discard=DiscardPolicy.OLD,
            num_replicas=settings.nats_replicas,
        ),
    ]


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    config: ConsumerConfig

    @property
    def name(self) -> str:
        name = self.config.durable_name
        if name is None:                # every spec is made by _durable, which names it
            raise ValueError(f"consumer on {self.stream} has no durable name")
        return name

    @property
    def subject(self) -> str:
        """The subject (pattern) the consumer filters on."""
        subject = self.config.filter_subject
        if subject is None:             # every spec is made by _durable, which sets it
            raise ValueError(f"consumer {self.name} has no filter subject")
        return subject


def _durable(name: str, filter_subject: str, *, ack_wait: float, max_deliver: int = 5,
             backoff: list[float] | None = None, max_ack_pending: int = 1000) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=name, name=name, filter_subject=filter_subject,
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT,
        ack_wait=ack_wait, max_deliver=max_deliver, backoff=backoff,
        max_ack_pending=max_ack_pending,
    )


def consumers() -> dict[str, ConsumerSpec]:
    """Durable pull consumers; every replica of a service shares its consumer (work sharing)."""
    specs = [
        # LLM calls can be slow: a long ack wait, kept alive by in_progress() heartbeats.
        ConsumerSpec(STREAM_TASKS, _durable("agent-coo", task_subject("coo"), ack_wait=60, backoff=[60, 60, 120, 120])),
        ConsumerSpec(STREAM_TASKS, _durable("agent-engineer", task_subject("engineer"), ack_wait=60,
                                            backoff=[60, 60, 120, 120])),
        ConsumerSpec(STREAM_TASKS, _durable("agent-qa", task_subject("qa"), ack_wait=60, backoff=[60, 60, 120, 120])),
        ConsumerSpec(STREAM_SANDBOX, _durable("sandbox-runs", SANDBOX_RUNS, ack_wait=60, backoff=[60, 60, 120, 120])),
        ConsumerSpec(STREAM_RESULTS, _durable("orchestrator-agent-results", AGENT_RESULTS, ack_wait=30)),
        ConsumerSpec(STREAM_RESULTS, _durable("orchestrator-sandbox-results", SANDBOX_RESULTS, ack_wait=30)),
        ConsumerSpec(STREAM_CONTROL, _durable("orchestrator-control", f"{CONTROL}.>", ack_wait=30)),
    ]
    return {s.name: s for s in specs}


def buckets(settings: CommonSettings | None = None) -> list[KeyValueConfig]:
    """The KV buckets, with ``COO_NATS_REPLICAS`` copies.

    On one server every bucket allows direct get (as the Go client's KV does by default): a read is
    one request to the server, not a JetStream API call (measured: ~1.4x the reads/s with 16
    callers). Replicated, it does not: a direct get may be answered by any replica, and a follower
    that is behind (one back from a pause, catching up) answers with an older value. A compare-and-set
    write would only be retried, but a handler that reads a stale mission can take a fresh result for
    a duplicate and drop it (the cluster's node-loss test lost missions that way); reads through the
    stream's leader are current."""
    replicas = settings.nats_replicas if settings is not None else 1
    direct = replicas == 1
    return [
        KeyValueConfig(bucket=BUCKET_MISSIONS, description="mission state", history=5, storage=StorageType.FILE,
                       direct=direct, replicas=replicas),
        KeyValueConfig(bucket=BUCKET_BUDGET, description="budget ledgers and reservations", history=1,
                       storage=StorageType.FILE, direct=direct, replicas=replicas),
        KeyValueConfig(bucket=BUCKET_SANDBOX_RUNS, description="sandbox runs by run id", history=1,
                       storage=StorageType.FILE, ttl=30 * 86400, direct=direct, replicas=replicas),
    ]


def bucket_stream(bucket: str) -> str:
    """The stream that holds a KV bucket."""
    return f"KV_{bucket}"


# ----------------------------------------------------------------- who declares what
@dataclass(frozen=True)
class Scope:
    """The part of the topology a service's NATS user declares, and the streams it waits for
    (declared by another). ``coo.stack.nats_auth`` grants each user exactly this."""

    streams: tuple[str, ...] = ()
    consumers: tuple[str, ...] = ()
    buckets: tuple[str, ...] = ()
    waits_for: tuple[str, ...] = ()


ORCHESTRATOR_CONSUMERS = ("orchestrator-agent-results", "orchestrator-sandbox-results", "orchestrator-control")
AGENT_CONSUMERS = tuple(f"agent-{r}" for r in ("coo", "engineer", "qa"))
WORK_STREAMS = (STREAM_TASKS, STREAM_RESULTS, STREAM_SANDBOX, STREAM_CONTROL)
ALL_STREAMS = (*WORK_STREAMS, STREAM_TIMELINE, STREAM_DLQ)

#: By NATS user: what it declares. A user not listed (admin, or none) declares everything.
SCOPES: dict[str, Scope] = {
    "orchestrator": Scope(streams=ALL_STREAMS, consumers=ORCHESTRATOR_CONSUMERS, buckets=(BUCKET_MISSIONS,)),
    "agent": Scope(consumers=AGENT_CONSUMERS, waits_for=(STREAM_TASKS, STREAM_RESULTS)),
    "budget": Scope(buckets=(BUCKET_BUDGET,), waits_for=(STREAM_TIMELINE,)),
    "sandbox": Scope(consumers=("sandbox-runs",), buckets=(BUCKET_SANDBOX_RUNS,),
                     waits_for=(STREAM_SANDBOX, STREAM_RESULTS)),
}


def inbox_prefix(user: str) -> str:
    """The inbox prefix of a NATS user: replies to its requests arrive under ``<prefix>.>`` only."""
    return f"_INBOX_{user}"
