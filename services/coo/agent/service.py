"""The agent service: consumes ``coo.tasks.<role>`` and answers on ``coo.results.agent``.

One process serves the roles of ``COO_AGENT_ROLES`` (default all three), each on its durable
consumer (``agent-coo``, ``agent-engineer``, ``agent-qa``) with its own concurrency.

For each :class:`AgentTask`:

1. Bad tasks (no task or mission id, no/unknown role, role not matching the subject, no goal, a
   QA task without a sandbox result) raise :class:`InvalidMessage`: dead-lettered with a reason.
2. The work runs in an ``invoke_agent {role}`` INTERNAL span (GenAI conventions v1.41, see
   :mod:`coo.common.spans`; child of the bus CONSUMER span; ``mission.id`` comes from baggage and
   is the span's ``gen_ai.conversation.id``). A heartbeat calls ``delivery.in_progress()`` every
   ``COO_AGENT_HEARTBEAT_SECONDS`` so JetStream does not redeliver a long LLM call.
3. The prompt is built from the role's template and fitted to the model's context window.
4. Before every LLM call (the repair call too) a budget reservation is made
   (:class:`coo.budget.client.BudgetClient`) with the deterministic id ``{task_id}:{n}`` (n = 1, 2,
   ... the call's number within the task; ``{task_id}:{n}:d{delivery}`` on a redelivery, see
   :func:`reservation_id_for`), so a retried request never reserves twice. A refusal ends the
   task with ``BUDGET_EXCEEDED`` (error = the refusal's reason) and no LLM call. After the call
   the reservation is settled with the usage the provider reported (inside the chat span, which
   gets ``coo.cost.usd``); when the call fails it is released.
5. A refusal (``message.refusal``) ends the task with ``REFUSED`` and the refusal's text,
   scrubbed. An answer cut off by the output cap (``finish_reason: "length"``) gets one more call
   with twice the cap (up to ``COO_LLM_MAX_OUTPUT_TOKENS_CEILING`` and the context window, and
   within the budget), else a clear error. The answer is then validated; an invalid one gets one
   repair call (the invalid answer and the error are sent back); still invalid: ``INVALID_OUTPUT``.
   Before every call the task queues behind the provider's rate limits (:mod:`coo.agent.ratelimit`).
6. Transient LLM failures (timeouts, connection errors, 429, 5xx after the SDK's own retries)
   and an unreachable budget service raise :class:`Retry` (redelivered later), except from
   delivery ``COO_AGENT_FINAL_DELIVERY`` (default 4) on, which publishes ``ok=false`` instead so
   the mission can end. Other LLM errors (400, 401, 404...) are final at once.
7. The :class:`AgentResult` is published with ``Nats-Msg-Id = result:{task_id}``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import dataclass, field
from urllib.parse import urlparse

import nats.errors
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from opentelemetry.semconv.attributes.error_attributes import ERROR_TYPE
from opentelemetry.trace import Status, StatusCode

from coo.agent import metrics, roles
from coo.agent.llm import COST_ATTRIBUTE, Completion, LLMClient, LLMError, instrument_openai, response_format_for
from coo.agent.settings import AgentSettings
from coo.budget.client import BudgetClient
from coo.common import spans, topology, validate
from coo.common.bus import Bus, Delivery, InvalidMessage, Retry, ServiceError
from coo.common.scrub import scrub_text
from coo.common.service import ServiceContext, run
from coo.common.telemetry import get_logger, trace_exemplar
from coo.v1 import agent_pb2, budget_pb2, common_pb2

log = get_logger("coo.agent")
_tracer = trace.get_tracer("coo.agent")

WORKER = f"{socket.gethostname()}-{os.getpid()}"

_TRANSPORT_ERRORS = (nats.errors.Error, asyncio.TimeoutError, TimeoutError, ConnectionError)


# ---------------------------------------------------------------------------------- a run
class _Failure(Exception):
    """Ends the task with ok=false (``label`` is the bounded outcome of metrics and spans)."""

    def __init__(self, kind: agent_pb2.ErrorKind.ValueType, message: str, label: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.label = label


@dataclass
class _Run:
    task: agent_pb2.AgentTask
    delivery: Delivery
    role: str
    spec: roles.RoleSpec
    model: str
    max_output_tokens: int
    span: trace.Span
    usage: common_pb2.Usage = field(default_factory=common_pb2.Usage)
    calls: int = 0
    truncated_chars: int = 0
    answered_by: str = ""
    usage_estimated: bool = False
    structured_output: str = ""


def reservation_id_for(task_id: str, call: int, delivery: int) -> str:
    """``{task_id}:{call}``, deterministic: a retried budget request is answered from the same
    reservation. A redelivered task gets ``{task_id}:{call}:d{delivery}``: the earlier
    delivery's reservation was released (LLM error, then Retry) or settled (result not acked),
    and the budget service rightly refuses to reopen either; one orphaned by a crash expires by
    its TTL."""
    return f"{task_id}:{call}" if delivery <= 1 else f"{task_id}:{call}:d{delivery}"


def _now() -> Timestamp:
    ts = Timestamp()
    ts.GetCurrentTime()
    return ts


def _short(text: object, limit: int = 500) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


class Agent:
    def __init__(self, bus: Bus, settings: AgentSettings, llm: LLMClient, budget: BudgetClient | None = None) -> None:
        self.bus = bus
        self.settings = settings
        self.llm = llm
        self.budget = budget or BudgetClient(bus, timeout=settings.agent_budget_timeout_seconds)

    # ------------------------------------------------------------------------- checks
    def _validate(self, task: agent_pb2.AgentTask, delivery: Delivery) -> str:
        validate.require(task, "task_id", what="AgentTask")
        validate.require(task, "mission_id", what=f"AgentTask {task.task_id}")
        role = roles.ROLE_NAMES.get(task.role)
        if role is None:
            raise InvalidMessage(f"AgentTask {task.task_id} has no valid role (role={task.role})")
        subject_role = delivery.subject.rsplit(".", 1)[-1]
        if subject_role != role:
            raise InvalidMessage(f"AgentTask {task.task_id} for role {role} arrived on {delivery.subject}")
        if role not in self.settings.agent_roles:
            raise InvalidMessage(f"role {role} is not served by this agent")
        validate.require(task, "goal", what=f"AgentTask {task.task_id}")
        if role == "qa":
            validate.require(task, "sandbox_result", what=f"QA task {task.task_id}")
        return role

    # ------------------------------------------------------------------------ handler
    async def handle(self, task: agent_pb2.AgentTask, delivery: Delivery) -> None:
        role = self._validate(task, delivery)
        spec = roles.SPECS[role]
        model = self.settings.model_for(role, task.model)
        started = time.perf_counter()
        outcome = "internal"
        attributes = {"coo.task.id": task.task_id, "coo.attempt": task.attempt}
        with spans.invoke_agent(_tracer, role, provider=self.settings.llm_provider_name, model=model,
                                mission_id=task.mission_id, attributes=attributes) as span:
            heartbeat = asyncio.create_task(self._heartbeat(delivery), name=f"heartbeat:{task.task_id}")
            run_ = _Run(task, delivery, role, spec, model,
                        self.settings.max_output_tokens_for(role, task.max_output_tokens), span)
            try:
                result = agent_pb2.AgentResult(task_id=task.task_id, mission_id=task.mission_id, role=task.role,
                                               attempt=task.attempt, model=model, worker=WORKER)
                log.info("agent task started", task_id=task.task_id, role=role, attempt=task.attempt,
                         model=model, delivery=delivery.num_delivered)
                try:
                    await self._work(run_, result)
                    result.ok = True
                    result.error_kind = agent_pb2.ERROR_KIND_NONE
                    outcome = "ok"
                except _Failure as failure:
                    result.ok = False
                    result.error = _short(str(failure), 2000)
                    result.error_kind = failure.kind
                    outcome = failure.label
                except Retry:
                    raise
                except Exception as exc:
                    if delivery.num_delivered < self.settings.agent_final_delivery:
                        raise
                    span.record_exception(exc)
                    log.error("agent task failed unexpectedly; reporting it", task_id=task.task_id,
                              error=f"{type(exc).__name__}: {_short(exc, 300)}")
                    result.ok = False
                    result.error = f"internal error: {type(exc).__name__}: {_short(exc, 300)}"
                    result.error_kind = agent_pb2.ERROR_KIND_INTERNAL
                    outcome = "internal"
                result.usage.CopyFrom(run_.usage)
                result.usage_estimated = run_.usage_estimated
                result.structured_output = run_.structured_output
                if run_.answered_by:
                    result.model = run_.answered_by
                result.duration_seconds = time.perf_counter() - started
                result.finished_at.CopyFrom(_now())
                self._annotate(span, run_, outcome)
                if not result.ok:
                    span.set_status(Status(StatusCode.ERROR, outcome))
                await self.bus.publish(topology.AGENT_RESULTS, result, msg_id=f"result:{task.task_id}",
                                       mission_id=task.mission_id)
                log.info("agent task finished", task_id=task.task_id, role=role, outcome=outcome, ok=result.ok,
                         input_tokens=run_.usage.input_tokens, output_tokens=run_.usage.output_tokens,
                         cost_usd=round(run_.usage.cost_usd, 6), calls=run_.usage.calls,
                         duration_s=round(result.duration_seconds, 3), error=result.error or None)
            except Retry as exc:
                outcome = "retry"
                self._annotate(span, run_, outcome)
                span.set_status(Status(StatusCode.ERROR, "retry"))
                log.warning("agent task handed back for redelivery", task_id=task.task_id, role=role,
                            reason=str(exc), delay=exc.delay, delivery=delivery.num_delivered)
                raise
            except asyncio.CancelledError:
                # the service is stopping: the bus hands the task back (a nak), another attempt follows
                outcome = "handed_back"
                self._annotate(span, run_, outcome)
                span.set_status(Status(StatusCode.ERROR, "handed back: the agent stopped"))
                raise
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute(ERROR_TYPE, type(exc).__qualname__)
                raise
            finally:
                heartbeat.cancel()
                metrics.TASK_SECONDS.labels(role, outcome).observe(time.perf_counter() - started,
                                                                   exemplar=trace_exemplar())

    def _annotate(self, span: trace.Span, run_: _Run, outcome: str) -> None:
        span.set_attribute("coo.outcome", outcome)
        span.set_attribute(spans.GEN_AI_USAGE_INPUT_TOKENS, run_.usage.input_tokens)
        span.set_attribute(spans.GEN_AI_USAGE_OUTPUT_TOKENS, run_.usage.output_tokens)
        span.set_attribute(COST_ATTRIBUTE, run_.usage.cost_usd)
        span.set_attribute("coo.llm.calls", run_.calls)
        if run_.answered_by:
            span.set_attribute(spans.GEN_AI_RESPONSE_MODEL, run_.answered_by)
        if run_.truncated_chars:
            span.set_attribute("coo.prompt.truncated_chars", run_.truncated_chars)
        if outcome not in ("ok",):
            span.set_attribute(ERROR_TYPE, outcome)

    async def _heartbeat(self, delivery: Delivery) -> None:
        interval = self.settings.agent_heartbeat_seconds
        while True:
            await asyncio.sleep(interval)
            if delivery.settled:
                return
            try:
                await delivery.in_progress()
            except Exception as exc:  # noqa: BLE001 - the ack wait redelivers at worst
                log.debug("heartbeat failed", error=str(exc) or type(exc).__name__)

    # --------------------------------------------------------------------------- work
    async def _work(self, run_: _Run, result: agent_pb2.AgentResult) -> None:
        spec, settings = run_.spec, self.settings
        conversation = roles.conversation_for(spec, run_.task, settings)
        completion = await self._call(run_, conversation)
        if completion.finish_reason == "length" and self._parse(run_, completion)[1] is not None:
            completion = await self._longer(run_, conversation)
        answer, error = self._parse(run_, completion)
        repairs = 0
        while error is not None and repairs < settings.agent_repair_attempts:
            repairs += 1
            metrics.LLM_ERRORS.labels(run_.model, "invalid_output").inc()
            log.info("invalid answer; asking for a repair", task_id=run_.task.task_id, role=run_.role,
                     error=_short(error, 300), finish_reason=completion.finish_reason)
            run_.span.add_event("coo.repair", {"coo.repair.reason": _short(error, 300)})
            repaired = roles.repair_of(conversation, spec, completion.text, error)
            completion = await self._call(run_, repaired)
            answer, error = self._parse(run_, completion)
        if error is not None:
            metrics.LLM_ERRORS.labels(run_.model, "invalid_output").inc()
            raise _Failure(agent_pb2.ERROR_KIND_INVALID_OUTPUT,
                           f"invalid {spec.schema_name} answer after {repairs} repair call(s): {error}",
                           "invalid_output")
        spec.apply(answer, result)

    async def _longer(self, run_: _Run, conversation: roles.Conversation) -> Completion:
        """The one retry of an answer cut off by the output cap: twice the cap, if it fits."""
        cut_at = run_.max_output_tokens
        context = self.settings.context_tokens_for(run_.model)
        spec = run_.spec
        needed = roles.fit(conversation, context_tokens=context, max_output_tokens=1,
                           response_format=response_format_for(spec.schema_name, spec.schema))[2]
        larger = min(2 * cut_at, self.settings.llm_max_output_tokens_ceiling, context - needed)
        if larger <= cut_at:
            raise _Failure(agent_pb2.ERROR_KIND_INVALID_OUTPUT,
                           f"the answer was cut off at the limit of {cut_at} output tokens, and no larger limit "
                           f"fits (ceiling {self.settings.llm_max_output_tokens_ceiling}, context {context})",
                           "output_cut_off")
        log.info("answer cut off by the output limit; one retry with a larger one", task_id=run_.task.task_id,
                 role=run_.role, max_output_tokens=cut_at, retry_with=larger)
        run_.span.add_event("coo.output_cut_off", {"coo.max_output_tokens": cut_at, "coo.retry_with": larger})
        run_.max_output_tokens = larger
        try:
            completion = await self._call(run_, conversation)
        except _Failure as failure:
            if failure.kind == agent_pb2.ERROR_KIND_BUDGET_EXCEEDED:
                raise _Failure(failure.kind, f"the answer was cut off at {cut_at} output tokens and a retry with "
                               f"{larger} does not fit the budget: {failure}", failure.label) from None
            raise
        if completion.finish_reason == "length" and self._parse(run_, completion)[1] is not None:
            raise _Failure(agent_pb2.ERROR_KIND_INVALID_OUTPUT,
                           f"the answer was cut off at the output limit twice ({cut_at}, then {larger} tokens)",
                           "output_cut_off")
        return completion

    def _parse(self, run_: _Run, completion: Completion):
        answer, error = roles.parse_answer(run_.spec.answer_model, completion.text,
                                           run_.spec.validation_context(self.settings))
        if error is not None and completion.finish_reason == "length":
            error += (f" (the answer was cut off at the limit of {run_.max_output_tokens} output tokens:"
                      " answer more concisely)")
        return answer, error

    def _transient(self, run_: _Run, message: str, kind: agent_pb2.ErrorKind.ValueType, label: str) -> Exception:
        """Retry later, unless this delivery is the last one allowed: then end the task."""
        n = run_.delivery.num_delivered
        if n >= self.settings.agent_final_delivery:
            return _Failure(kind, f"{message} (giving up after {n} deliveries)", label)
        return Retry(message, delay=min(30.0, 2.0 * 2 ** (n - 1)))

    async def _call(self, run_: _Run, conversation: roles.Conversation) -> Completion:
        spec, task = run_.spec, run_.task
        # The estimate counts the schema once, as it goes out in every structured-output mode.
        response_format = response_format_for(spec.schema_name, spec.schema)
        try:
            messages, truncated, estimate = roles.fit(
                conversation, context_tokens=self.settings.context_tokens_for(run_.model),
                max_output_tokens=run_.max_output_tokens, response_format=response_format)
        except roles.PromptTooLarge as exc:
            raise _Failure(agent_pb2.ERROR_KIND_INTERNAL, str(exc), "prompt_too_large") from None
        if truncated:
            run_.truncated_chars += truncated
            log.info("prompt truncated to fit the context window", task_id=task.task_id,
                     truncated_chars=truncated, estimated_tokens=estimate)

        waited = await self.llm.wait_turn(run_.model, estimate + run_.max_output_tokens)
        if waited > 0.5:
            run_.span.add_event("coo.rate_limited", {"coo.waited_seconds": round(waited, 3)})
        run_.calls += 1
        reservation_id = reservation_id_for(task.task_id, run_.calls, run_.delivery.num_delivered)
        try:
            reply = await self.budget.reserve(
                reservation_id, task.mission_id, run_.model, estimate, run_.max_output_tokens,
                ttl_seconds=self.settings.reservation_ttl(), task_id=task.task_id, role=run_.role)
        except ServiceError as exc:
            if exc.code == "500":
                raise self._transient(run_, f"budget service error: {exc}", agent_pb2.ERROR_KIND_INTERNAL,
                                      "budget_unavailable") from None
            raise _Failure(agent_pb2.ERROR_KIND_INTERNAL, f"budget service error: {exc}", "budget_error") from None
        except _TRANSPORT_ERRORS as exc:
            raise self._transient(run_, f"budget service unavailable ({type(exc).__name__})",
                                  agent_pb2.ERROR_KIND_INTERNAL, "budget_unavailable") from None
        if not reply.ok:
            run_.span.add_event("coo.budget.refused", {"coo.budget.reason": _short(reply.reason, 300)})
            raise _Failure(agent_pb2.ERROR_KIND_BUDGET_EXCEEDED, reply.reason or "the budget service refused",
                           "budget_exceeded")

        async def on_usage(input_tokens: int, output_tokens: int, reported: bool) -> float | None:
            return await self._settle(run_, reservation_id, input_tokens, output_tokens, reported)

        started = time.perf_counter()
        try:
            completion = await self.llm.chat(model=run_.model, messages=messages, max_tokens=run_.max_output_tokens,
                                             schema_name=spec.schema_name, schema=spec.schema, on_usage=on_usage)
        except LLMError as exc:
            seconds = time.perf_counter() - started
            metrics.LLM_SECONDS.labels(run_.model, "error").observe(seconds)
            self._chat_duration(run_, seconds, exc.kind)
            metrics.LLM_ERRORS.labels(run_.model, exc.kind).inc()
            log.warning("LLM call failed", task_id=task.task_id, role=run_.role, kind=exc.kind,
                        transient=exc.transient, error=_short(exc, 300))
            if not exc.settled:
                await self._release(run_, reservation_id, exc.kind)
            if exc.transient:
                retry = self._transient(run_, f"LLM call failed: {exc}", agent_pb2.ERROR_KIND_LLM, "llm_error")
                if isinstance(retry, Retry) and exc.retry_after:
                    retry.delay = max(retry.delay, min(exc.retry_after, 300.0))
                raise retry from None
            raise _Failure(agent_pb2.ERROR_KIND_LLM, f"LLM call failed: {exc}", "llm_error") from None
        seconds = time.perf_counter() - started
        metrics.LLM_SECONDS.labels(run_.model, "ok").observe(seconds)
        self._chat_duration(run_, seconds, "")
        run_.usage.calls += 1
        run_.answered_by = completion.model
        run_.structured_output = completion.structured_output
        run_.usage_estimated = run_.usage_estimated or not completion.usage_reported
        if completion.refusal:
            metrics.LLM_ERRORS.labels(run_.model, "refusal").inc()
            refusal = _short(scrub_text(" ".join(completion.refusal.split())), 500)
            run_.span.add_event("coo.refusal", {"coo.refusal.text": refusal})
            raise _Failure(agent_pb2.ERROR_KIND_REFUSED, f"the model refused: {refusal}", "refused")
        return completion

    def _chat_duration(self, run_: _Run, seconds: float, error_type: str) -> None:
        """gen_ai.client.operation.duration of one chat call (``error_type`` empty: it succeeded)."""
        metrics.GENAI_OPERATION_DURATION.labels(spans.CHAT, self.settings.llm_provider_name, run_.model,
                                                error_type).observe(seconds, exemplar=trace_exemplar())

    async def _settle(self, run_: _Run, reservation_id: str, input_tokens: int, output_tokens: int,
                      reported: bool) -> float | None:
        """Count the usage and settle the reservation; never raises (the answer is already paid)."""
        run_.usage.input_tokens += input_tokens
        run_.usage.output_tokens += output_tokens
        metrics.LLM_TOKENS.labels(run_.model, "input").inc(input_tokens)
        metrics.LLM_TOKENS.labels(run_.model, "output").inc(output_tokens)
        provider = self.settings.llm_provider_name
        for token_type, count in ((spans.INPUT, input_tokens), (spans.OUTPUT, output_tokens)):
            metrics.GENAI_TOKEN_USAGE.labels(spans.CHAT, provider, run_.model, token_type).observe(
                count, exemplar=trace_exemplar())
        if not reported:
            log.warning("the LLM endpoint reported no usage; settling an estimate", task_id=run_.task.task_id)
        try:
            reply = await self.budget.settle(reservation_id, run_.task.mission_id, run_.model,
                                             input_tokens, output_tokens)
        except Exception as exc:  # noqa: BLE001 - logged; the budget service expires the reservation
            log.error("budget settle failed; this call's cost is not recorded", reservation_id=reservation_id,
                      error=f"{type(exc).__name__}: {_short(exc, 200)}")
            return None
        if not reply.ok:
            log.warning("budget settle not accepted", reservation_id=reservation_id, reason=reply.reason)
        cost = reply.cost_usd
        run_.usage.cost_usd += cost
        metrics.LLM_COST.labels(run_.model).inc(max(0.0, cost))
        if reply.over_limit:
            log.warning("the actual usage took a budget past its limit", reservation_id=reservation_id,
                        scope=budget_pb2.BudgetScope.Name(reply.scope))
        return cost

    async def _release(self, run_: _Run, reservation_id: str, reason: str) -> None:
        try:
            await self.budget.release(reservation_id, run_.task.mission_id, reason=f"llm error: {reason}")
        except Exception as exc:  # noqa: BLE001 - the reservation expires by its TTL anyway
            log.warning("budget release failed; the reservation will expire", reservation_id=reservation_id,
                        error=type(exc).__name__)


# -------------------------------------------------------------------------------- service
def _llm_check(settings: AgentSettings, llm: LLMClient):
    url = urlparse(settings.llm_base_url)
    host = url.hostname or "127.0.0.1"
    port = url.port or (443 if url.scheme == "https" else 80)

    async def check() -> tuple[bool, str]:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=2.0)
        except (TimeoutError, OSError) as exc:
            return False, f"{host}:{port} unreachable ({type(exc).__name__})"
        writer.close()
        return True, f"{host}:{port} reachable; {llm.describe()}"

    return check


async def start(ctx: ServiceContext) -> None:
    settings = ctx.settings
    if not isinstance(settings, AgentSettings):
        settings = AgentSettings()
    instrument_openai()
    llm = LLMClient(settings)
    agent = Agent(ctx.bus, settings, llm)
    ctx.checks["llm"] = _llm_check(settings, llm)
    for role in settings.agent_roles:
        ctx.bus.consume(f"agent-{role}", agent.handle, [agent_pb2.AgentTask],
                        concurrency=settings.concurrency_for(role))
    log.info("agent roles consuming", roles=list(settings.agent_roles), llm_base_url=settings.llm_base_url,
             models={r: settings.model_for(r) for r in settings.agent_roles},
             structured_output=settings.llm_structured_output,
             concurrency={r: settings.concurrency_for(r) for r in settings.agent_roles})


def main() -> None:
    run("agent", lambda s: s.agent_port, AgentSettings, start)
