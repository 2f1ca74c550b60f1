"""Every Prometheus metric of COO, defined once (prometheus-client default registry).

Names follow Prometheus conventions (``_total``, ``_seconds``, base units); labels are bounded
— never a mission id: observations carry the trace id as an exemplar instead.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

_LATENCY = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
_LONG = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)

# ---------------------------------------------------------------------------- bus
BUS_MESSAGES = Counter("coo_bus_messages_total", "Bus messages by subject template and outcome",
                       ["subject", "outcome"])
BUS_PROCESS_SECONDS = Histogram("coo_bus_process_duration_seconds", "Time to handle one bus message",
                                ["subject"], buckets=_LATENCY)
BUS_REDELIVERIES = Counter("coo_bus_redeliveries_total", "Messages delivered more than once", ["subject"])
BUS_REQUESTS = Counter("coo_bus_requests_total", "Request/reply calls by subject, side and outcome",
                       ["subject", "side", "outcome"])
DLQ_MESSAGES = Gauge("coo_dlq_messages", "Messages in the dead-letter stream")

# ------------------------------------------------------------------------ missions
MISSIONS = Counter("coo_missions_total", "Missions that reached a final status", ["status"])
MISSIONS_STARTED = Counter("coo_missions_started_total", "Missions submitted")
MISSIONS_ACTIVE = Gauge("coo_missions_active", "Missions in a live state", ["status"])
MISSION_SECONDS = Histogram("coo_mission_duration_seconds", "Mission wall time from creation to final status",
                            ["status"], buckets=_LONG)
MISSION_RETRIES = Counter("coo_mission_retries_total", "Engineer retries after a failed QA verdict")
TASK_SECONDS = Histogram("coo_task_duration_seconds", "Agent task duration by role (observed by the agent only)",
                         ["role", "outcome"],
                         buckets=_LATENCY + (120, 300))
QA_OVERRULED = Counter("coo_qa_overruled_total",
                       "QA verdicts that passed a run without evidence of success (red or no test), overruled",
                       ["model"])
BACKPRESSURE = Counter("coo_backpressure_pauses_total", "Missions hard-paused by backpressure")
ADMISSION_REFUSED = Counter("coo_missions_refused_total", "Missions refused at admission", ["reason"])
MISSIONS_KEPT = Gauge("coo_missions_finished_kept", "Finished missions in the missions bucket (what retention bounds)")
MISSIONS_DELETED = Counter("coo_missions_deleted_total", "Finished missions deleted by retention")

# ----------------------------------------------------------------------------- LLM
LLM_TOKENS = Counter("coo_llm_tokens_total", "LLM tokens by model and type (input/output)", ["model", "type"])
LLM_COST = Counter("coo_llm_cost_usd_total", "LLM cost in USD by model", ["model"])
LLM_SECONDS = Histogram("coo_llm_request_duration_seconds", "LLM call latency by model and outcome",
                        ["model", "outcome"], buckets=_LATENCY + (120,))
LLM_ERRORS = Counter("coo_llm_errors_total", "LLM call errors by model and kind", ["model", "kind"])

# -------------------------------------------------------------------------- budget
BUDGET_SPENT = Gauge("coo_budget_spent_usd", "Settled spend by scope (daily, monthly)", ["scope"])
BUDGET_RESERVED = Gauge("coo_budget_reserved_usd", "Outstanding reservations by scope", ["scope"])
BUDGET_LIMIT = Gauge("coo_budget_limit_usd", "Configured limit by scope", ["scope"])
BUDGET_REMAINING = Gauge("coo_budget_remaining_usd", "Limit minus spent and reserved, by scope", ["scope"])
BUDGET_EXCEEDED = Counter("coo_budget_exceeded_total", "Reservations refused or settlements over a limit",
                          ["scope"])
BUDGET_OPERATIONS = Counter("coo_budget_operations_total", "Budget operations by verb and outcome",
                            ["operation", "outcome"])
BUDGET_CAS_CONFLICTS = Counter("coo_budget_cas_conflicts_total", "Compare-and-set retries on the ledger")
BUDGET_EXPIRED = Counter("coo_budget_reservations_expired_total", "Orphaned reservations expired")

# ------------------------------------------------------------------------- sandbox
SANDBOX_RUNS = Counter("coo_sandbox_runs_total", "Sandbox runs by outcome and backend", ["outcome", "backend"])
SANDBOX_SECONDS = Histogram("coo_sandbox_run_duration_seconds", "Sandbox run wall time", ["backend"],
                            buckets=_LATENCY + (120,))
SANDBOX_DUPLICATES = Counter("coo_sandbox_duplicate_requests_total",
                             "Redelivered run requests answered from the stored result")

# ------------------------------------------------ GenAI client metrics (semantic conventions v1.41)
# gen_ai.client.token.usage and gen_ai.client.operation.duration under their Prometheus names, next to
# the coo_llm_* metrics above; labels are the convention's attributes with dots made underscores
# (error_type empty when the call succeeded), buckets the ones the convention advises.
GENAI_TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage", "Number of input and output tokens used (gen_ai.client.token.usage)",
    ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "gen_ai_token_type"],
    buckets=(1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864))
GENAI_OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds", "GenAI operation duration (gen_ai.client.operation.duration)",
    ["gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "error_type"],
    buckets=(0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92))
