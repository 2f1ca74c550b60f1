"""A chat completion object from an answer: token accounting, truncation, usage.

Tokens are counted as ``ceil(chars / 4)``. Completion tokens are the content's (or the
refusal's) plus the reasoning text's, at least 1. A limit (``max_tokens`` or
``max_completion_tokens``) that the answer does not fit in cuts the text at the limit and ends
with ``finish_reason: "length"``: a provider never bills past the limit. ``expensive`` reports
at least its token count as the content's without the text (so, capped, it always runs to the
limit).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

CHARS_PER_TOKEN = 4
SYSTEM_FINGERPRINT = "fp_mockllm_v1"


def estimate_tokens(text: str) -> int:
    return math.ceil(len(text) / CHARS_PER_TOKEN)


@dataclass(frozen=True)
class Answer:
    """What the model says: content, or a refusal (content None); maybe its reasoning."""

    content: str | None
    refusal: str | None = None
    reasoning: str | None = None


@dataclass(frozen=True)
class Billed:
    answer: Answer
    completion_tokens: int
    reasoning_tokens: int
    finish_reason: str


def bill(answer: Answer, limit: int | None, expensive: int | None = None) -> Billed:
    """The answer as sent (cut at ``limit`` if it does not fit) and its completion tokens."""
    reasoning_tokens = estimate_tokens(answer.reasoning) if answer.reasoning else 0
    text = answer.content if answer.content is not None else answer.refusal or ""
    text_tokens = max(1, estimate_tokens(text))
    if expensive is not None and answer.content is not None:
        text_tokens = max(expensive, text_tokens)
    if limit is None or reasoning_tokens + text_tokens <= limit:
        return Billed(answer, reasoning_tokens + text_tokens, reasoning_tokens, "stop")
    # the reasoning comes first; whatever room it leaves is the content's
    room = max(0, limit - reasoning_tokens)
    reasoning = answer.reasoning[: limit * CHARS_PER_TOKEN] if answer.reasoning else None
    cut = replace(answer, reasoning=reasoning)
    if answer.content is not None:
        cut = replace(cut, content=answer.content[: room * CHARS_PER_TOKEN])
    else:
        cut = replace(cut, refusal=text[: room * CHARS_PER_TOKEN])
    return Billed(cut, limit, min(reasoning_tokens, limit), "length")


def usage(prompt_tokens: int, billed: Billed) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": billed.completion_tokens,
        "total_tokens": prompt_tokens + billed.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": billed.reasoning_tokens, "audio_tokens": 0,
            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0,
        },
    }


def completion(model: str, billed: Billed, prompt_tokens: int, *,
               with_usage: bool = True) -> dict[str, Any]:
    """The ``chat.completion`` object."""
    message: dict[str, Any] = {"role": "assistant", "content": billed.answer.content,
                               "refusal": billed.answer.refusal, "annotations": []}
    if billed.answer.reasoning is not None:
        message["reasoning_content"] = billed.answer.reasoning
    body: dict[str, Any] = {
        "id": f"chatcmpl-mock{uuid.uuid4().hex[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": SYSTEM_FINGERPRINT,
        "service_tier": "default",
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": None,
            "finish_reason": billed.finish_reason,
        }],
    }
    if with_usage:
        body["usage"] = usage(prompt_tokens, billed)
    return body
