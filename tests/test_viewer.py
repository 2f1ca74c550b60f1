"""The trace UI's place in the local stack (coo.stack.viewer): the collector overlay that sends it a
copy of every signal, checked by the real collector; the component's command line and links.
In a browser, with a mission's trace: tests/test_stack_ui.py."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from coo.stack import viewer
from coo.stack.components import StackSettings, components, tool_path


def test_the_overlay_adds_the_viewer_to_every_pipeline_and_keeps_the_others():
    committed = yaml.safe_load(viewer.OTELCOL_CONFIG.read_text())
    overlay = yaml.safe_load(viewer.render_otelcol_overlay("127.0.0.1:24317"))
    assert overlay["exporters"][viewer.EXPORTER]["endpoint"] == "127.0.0.1:24317"
    assert overlay["exporters"][viewer.EXPORTER]["tls"] == {"insecure": True}
    pipelines = committed["service"]["pipelines"]
    assert set(overlay["service"]["pipelines"]) == set(pipelines) >= {"traces", "metrics", "logs"}
    for name, pipeline in pipelines.items():
        assert overlay["service"]["pipelines"][name]["exporters"] == [*pipeline["exporters"], viewer.EXPORTER]


def test_the_real_collector_accepts_the_committed_config_with_the_overlay(tmp_path):
    otelcol, why = tool_path("otelcol")
    if not otelcol:
        pytest.skip(why)
    overlay = viewer.write_otelcol_overlay(tmp_path, "127.0.0.1:24317")
    res = subprocess.run([otelcol, "validate", "--config", str(viewer.OTELCOL_CONFIG), "--config", str(overlay)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    # and the overlay does validate something: an unknown exporter in a pipeline is refused
    bad = tmp_path / "bad.yaml"
    bad.write_text(overlay.read_text().replace(f"- {viewer.EXPORTER}", "- otlp_grpc/nowhere", 1))
    res = subprocess.run([otelcol, "validate", "--config", str(viewer.OTELCOL_CONFIG), "--config", str(bad)],
                         capture_output=True, text=True, timeout=60, check=False)
    assert res.returncode != 0


def test_the_component_has_its_own_ports_a_capped_store_and_no_browser(tmp_path):
    s = StackSettings(state_dir=tmp_path, viewer_port=18000, viewer_otlp_grpc_port=28317,
                      viewer_otlp_http_port=28318, viewer_db_max_mb=64)
    parts = {c.name: c for c in components(s)}
    c = parts["viewer"]
    assert c.local_only and c.url == "http://127.0.0.1:18000" and c.health_url == "http://127.0.0.1:18000/"
    assert c.links == {"trace_ui": "http://127.0.0.1:18000/traces"}
    args = c.command[1:]
    for flag, value in (("--host", "127.0.0.1"), ("--browser-port", "18000"), ("--grpc", "28317"),
                        ("--http", "28318"), ("--db", str(tmp_path / "viewer" / "telemetry.duckdb")),
                        ("--db-max-size", "64MB")):
        assert args[args.index(flag) + 1] == value, flag
    assert "--open-browser=false" in args
    # the collector gets the overlay only when the viewer can run
    otelcol_cmd = parts["otelcol"].command
    assert (str(viewer.overlay_path(tmp_path)) in otelcol_cmd) == (not c.missing)
    assert viewer.trace_path("ab" * 16) == "/traces/" + "ab" * 16
