"""The agent's metrics: tasks by role, LLM calls (coo_llm_*) and the GenAI client histograms
(semantic conventions v1.41).

Registered in the process that imports this module (the agent service): no other service exports
them. Names follow Prometheus conventions (``_total``, ``_seconds``, base units); labels are bounded.
"""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from coo.common.metrics import LATENCY_BUCKETS

TASK_SECONDS = Histogram("coo_task_duration_seconds", "Agent task duration by role (observed by the agent only)",
                         ["role", "outcome"],
                         buckets=(*LATENCY_BUCKETS, 120, 300))
LLM_TOKENS = Counter("coo_llm_tokens_total", "LLM tokens by model and type (input/output)", ["model", "type"])
LLM_COST = Counter("coo_llm_cost_usd_total", "LLM cost in USD by model", ["model"])
LLM_SECONDS = Histogram("coo_llm_request_duration_seconds", "LLM call latency by model and outcome",
                        ["model", "outcome"], buckets=(*LATENCY_BUCKETS, 120))
LLM_ERRORS = Counter("coo_llm_errors_total", "LLM call errors by model and kind", ["model", "kind"])
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
