"""The benchmarks stay importable and their pure parts correct (``make bench-smoke`` runs them);
the bus's fast trace-context paths, which the bus benchmark drove, give exactly what the OTel
propagators give. No timing is asserted anywhere: benchmarks are not tests."""

from __future__ import annotations

import importlib

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from bench import BENCHMARKS
from coo.common.bus import extract_trace_context, inject_trace_context


@pytest.mark.parametrize("name", [*BENCHMARKS, "run", "plots", "common", "stack"])
def test_bench_modules_import(name):
    module = importlib.import_module(f"bench.{name}")
    if name in BENCHMARKS:
        assert callable(module.run) and module.TITLE


def test_scrub_corpus_is_deterministic_and_labelled():
    from bench.scrub import Corpus

    a, b = Corpus().build(50_000), Corpus().build(50_000)
    assert [r.text for r in a] == [r.text for r in b]
    labelled = [r for r in a if r.kind]
    assert labelled and all(r.secret in r.text for r in labelled)


def test_readme_section_is_replaced_between_the_markers(tmp_path, monkeypatch):
    from bench import run

    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{run.BEGIN}\nold\n{run.END}\noutro\n")
    monkeypatch.setattr(run, "README", readme)
    assert run.update_readme("new table\n")
    assert readme.read_text() == f"intro\n{run.BEGIN}\nnew table\n{run.END}\noutro\n"


def _span(trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331, flags=0x03, state=None):
    return NonRecordingSpan(SpanContext(trace_id, span_id, is_remote=False, trace_flags=TraceFlags(flags),
                                        trace_state=state))


@pytest.mark.parametrize("bag", [{}, {"mission.id": "m-1"}, {"mission.id": "a b/ü", "other": "x=y;z"}])
@pytest.mark.parametrize("state", [None, TraceState([("vendor", "v1")])])
def test_inject_equals_the_propagators(bag, state):
    parent = Context()
    for key, value in bag.items():
        parent = baggage.set_baggage(key, value, context=parent)
    span = _span(state=state)
    expected: dict[str, str] = {}
    propagate.inject(expected, context=trace.set_span_in_context(span, parent))
    for _ in range(2):                      # the second time from the caches
        got: dict[str, str] = {}
        inject_trace_context(got, span, parent)
        assert got == expected


TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize("headers", [
    {},
    {"traceparent": TRACEPARENT},
    {"traceparent": TRACEPARENT, "baggage": "mission.id=m-1"},
    {"traceparent": TRACEPARENT, "baggage": "mission.id=a%20b,other=1;prop"},
    {"traceparent": TRACEPARENT, "tracestate": "vendor=v1", "baggage": "mission.id=m-1"},
    {"traceparent": " " + TRACEPARENT},
    {"traceparent": TRACEPARENT.upper()},
    {"traceparent": "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"},
    {"traceparent": "00-00000000000000000000000000000000-b7ad6b7169203331-01"},
    {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"},
    {"traceparent": "garbage", "baggage": "mission.id=m-1"},
    {"baggage": "mission.id=m-1"},
])
def test_extract_equals_the_propagators(headers):
    expected = propagate.extract(headers)
    for _ in range(2):
        got = extract_trace_context(headers)
        assert trace.get_current_span(got).get_span_context() == trace.get_current_span(expected).get_span_context()
        assert dict(baggage.get_all(got)) == dict(baggage.get_all(expected))
