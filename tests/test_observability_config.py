"""The observability configuration under observability/, docker-compose.yml and the stack's
rendered copies, checked with the real tools (promtool, amtool, a real Prometheus 2.42).

* Prometheus: ``promtool check config``, ``check rules``, ``test rules`` (tests/*.yml); the
  file_sd target files of the local stack and of compose; every alert's labels and annotations.
* Alertmanager: ``amtool check-config`` on the committed file and on a rendered one
  (services/coo/stack/render.py).
* Every PromQL expression (alert rules, dashboard panels, dashboard annotations) is run against
  a real Prometheus started here on an empty TSDB: a syntax error is a 400. Every metric it
  names exists (services/coo/common/metrics.py and each service's metrics.py, mockllm, the collector's own and span
  metrics), with the labels it has.
* Grafana (Docker only): every dashboard parses, every panel and target uses a provisioned data
  source uid.
* docker-compose.yml validates against the Compose Specification JSON schema and names the
  same components, ports, commands and config files as services/coo/stack/components.py.

tests/data/compose-spec.json is schema/compose-spec.json of github.com/compose-spec/compose-spec
at commit a08f8d51631b7127ddac3d2c65537db429d0f1d0 (2025-10-28; the file's last change before
the mirror's HEAD 170098ba, 2026-06-23), byte for byte (sha256 1f91e091f16b2dd5...).
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from coo.stack import render

ROOT = Path(__file__).resolve().parents[1]
OBS = ROOT / "observability"
PROM_DIR = OBS / "prometheus"
PROM_CONFIG = PROM_DIR / "prometheus.yml"
RULES = PROM_DIR / "rules" / "coo.yml"
AM_CONFIG = OBS / "alertmanager" / "alertmanager.yml"
GRAFANA = OBS / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"


def _need(binary: str) -> None:
    if not Path(binary).exists():
        pytest.skip(f"{binary} is missing (Debian packages prometheus / prometheus-alertmanager; `make setup`)")


def _run(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    res = subprocess.run([str(a) for a in args], cwd=cwd, capture_output=True, text=True, check=False, timeout=60)
    assert res.returncode == 0, f"{' '.join(map(str, args))} failed:\n{res.stdout}\n{res.stderr}"
    return res


# ================================================================================ Prometheus
EXPECTED_ALERTS = {"BudgetExceeded", "BudgetNearlySpent", "MissionFailureRatioHigh", "MissionDurationP95High",
                   "DeadLetterQueueGrowing", "TargetDown", "CollectorRefusingOrDropping"}


def _rules() -> list[dict]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"]]


def test_promtool_check_config():
    _need(PROMTOOL)
    _run(PROMTOOL, "check", "config", PROM_CONFIG)


def test_promtool_check_rules():
    _need(PROMTOOL)
    _run(PROMTOOL, "check", "rules", *sorted((PROM_DIR / "rules").glob("*.yml")))


def test_promtool_test_rules():
    _need(PROMTOOL)
    tests = sorted((PROM_DIR / "tests").glob("*.yml"))
    assert tests
    res = _run(PROMTOOL, "test", "rules", *tests, cwd=PROM_DIR)
    assert "SUCCESS" in res.stdout


def test_every_alert_has_severity_annotations_and_a_unit_test():
    rules = _rules()
    assert {r["alert"] for r in rules if "alert" in r} == EXPECTED_ALERTS
    tested: dict[str, set[str]] = {}
    for path in (PROM_DIR / "tests").glob("*.yml"):
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                tested.setdefault(check["alertname"], set()).add("firing" if check.get("exp_alerts") else "silent")
    for rule in rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        ann = rule["annotations"]
        assert ann["summary"] and ann["description"], name
        assert ann["runbook"] == f"docs/operations.md#{name.lower()}", name
        assert tested.get(name) == {"firing", "silent"}, f"{name} needs a firing and a silent promtool test"
    budget = next(r for r in rules if r["alert"] == "BudgetExceeded")
    assert budget["labels"]["severity"] == "critical"
    assert "by (scope)" in budget["expr"], "the orchestrator needs the scope label"
    assert budget.get("for", "0s") in ("0s", "0m", "15s", "30s")


def _file_sd_files(doc: dict) -> set[str]:
    files = set()
    for sc in doc["scrape_configs"]:
        assert not sc.get("static_configs"), f"job {sc['job_name']}: use file_sd_configs (one file, two stacks)"
        for sd in sc["file_sd_configs"]:
            files.update(sd["files"])
    for am in doc["alerting"]["alertmanagers"]:
        for sd in am["file_sd_configs"]:
            files.update(sd["files"])
    return files


def test_prometheus_targets_local_and_compose():
    from coo.stack.components import StackSettings

    doc = yaml.safe_load(PROM_CONFIG.read_text())
    jobs = {sc["job_name"]: sc for sc in doc["scrape_configs"]}
    assert set(jobs) == set(render.PROMETHEUS_JOBS)
    assert jobs["otelcol"]["honor_labels"] is True
    assert doc["global"]["scrape_interval"] == "5s"
    files = _file_sd_files(doc)
    assert files == {f"targets/{job}.json" for job in render.PROMETHEUS_JOBS}

    local = render.local_prometheus_targets(StackSettings.model_construct())  # defaults, no env
    compose = yaml.safe_load(COMPOSE.read_text())["services"]
    for job in render.PROMETHEUS_JOBS:
        committed = json.loads((PROM_DIR / "targets" / f"{job}.json").read_text())
        assert [t for g in committed for t in g["targets"]] == local[job], job
        for group in json.loads((PROM_DIR / "targets" / "compose" / f"{job}.json").read_text()):
            for target in group["targets"]:
                host, port = target.rsplit(":", 1)
                assert (host == "localhost" and job == "prometheus") or host in compose, target
                assert port == local[job][0].rsplit(":", 1)[1], target


def test_rendered_prometheus_config(tmp_path):
    _need(PROMTOOL)
    targets = {"otelcol": ["127.0.0.1:18889"], "prometheus": ["127.0.0.1:19090"],
               "alertmanager": ["127.0.0.1:19093"], "otelcol-internal": ["127.0.0.1:18888"]}
    path = render.write_prometheus_config(tmp_path / "state", targets)
    assert path == tmp_path / "state" / "config" / "prometheus" / "prometheus.yml"
    _run(PROMTOOL, "check", "config", path)
    tdir = path.parent / "targets"
    assert json.loads((tdir / "otelcol.json").read_text()) == [{"targets": ["127.0.0.1:18889"], "labels": {}}]
    assert json.loads((tdir / "jaeger.json").read_text()) == []  # not given: no targets
    rendered = yaml.safe_load(path.read_text())
    assert rendered["rule_files"] == [str(PROM_DIR / "rules" / "*.yml")]
    with pytest.raises(ValueError):
        render.write_prometheus_targets(tdir, {"nope": ["x:1"]})


# ============================================================================== Alertmanager
def test_amtool_check_config_committed():
    _need(AMTOOL)
    _run(AMTOOL, "check-config", AM_CONFIG)
    doc = yaml.safe_load(AM_CONFIG.read_text())
    assert doc["route"]["receiver"] == "coo-orchestrator"
    assert doc["route"]["group_by"] == ["alertname", "scope"]
    budget_route = next(r for r in doc["route"]["routes"] if 'alertname = "BudgetExceeded"' in r["matchers"])
    assert budget_route["group_wait"] == "5s"
    (receiver,) = doc["receivers"]
    (hook,) = receiver["webhook_configs"]
    assert hook["send_resolved"] is True
    assert hook["url"].endswith("/v1/alerts")
    assert hook["http_config"]["authorization"]["credentials_file"]
    assert "credentials" not in hook["http_config"]["authorization"], "no token in the file"


def test_amtool_check_config_rendered(tmp_path):
    _need(AMTOOL)
    token = tmp_path / "data" / "api-token"
    text = render.render_alertmanager_config("http://127.0.0.1:18080", token)
    path = tmp_path / "alertmanager.yml"
    path.write_text(text)
    _run(AMTOOL, "check-config", path)
    doc, committed = yaml.safe_load(text), yaml.safe_load(AM_CONFIG.read_text())
    hook = doc["receivers"][0]["webhook_configs"][0]
    assert hook["url"] == "http://127.0.0.1:18080/v1/alerts"
    assert hook["http_config"]["authorization"]["credentials_file"] == str(token.resolve())
    # Everything else is the committed file.
    c_hook = committed["receivers"][0]["webhook_configs"][0]
    for h in (hook, c_hook):
        h.pop("url")
        h["http_config"]["authorization"].pop("credentials_file")
    assert doc == committed
    # The stack's helper writes the same text into its state dir.
    written = render.write_alertmanager_config(tmp_path / "state", "http://127.0.0.1:18080/v1/alerts", token)
    assert written.read_text() == text
    assert render.alerts_url("http://h:1/") == "http://h:1/v1/alerts"
    with pytest.raises(ValueError):
        render.alerts_url("orchestrator:8080")


# ===================================================================== PromQL: syntax + names
def _known_metrics() -> dict[str, set[str] | None]:
    """name -> label names (None: not checked) of every metric the dashboards and rules may use."""
    from prometheus_client.metrics import MetricWrapperBase

    import coo.agent.metrics
    import coo.budget.metrics
    import coo.common.metrics
    import coo.mockllm.app as mockllm_app
    import coo.orchestrator.metrics
    import coo.sandbox.metrics

    known: dict[str, set[str] | None] = {}
    for module in (coo.common.metrics, coo.orchestrator.metrics, coo.agent.metrics, coo.budget.metrics,
                   coo.sandbox.metrics, mockllm_app):
        for obj in vars(module).values():
            if not isinstance(obj, MetricWrapperBase):
                continue
            labels = set(obj._labelnames) | {"job", "instance"}
            kind, name = obj._type, obj._name
            if kind == "counter":
                known[f"{name}_total"] = labels
            elif kind == "histogram":
                known[f"{name}_bucket"] = labels | {"le"}
                known[f"{name}_count"] = known[f"{name}_sum"] = labels
            else:
                known[name] = labels
    # The collector's own telemetry as our config makes v0.159 expose it (service::telemetry
    # with the type and unit suffixes kept: _total, _bytes; checked against the built otelcol-coo).
    for sig in ("spans", "metric_points", "log_records"):
        for what in ("receiver_accepted", "receiver_refused", "receiver_failed"):
            known[f"otelcol_{what}_{sig}_total"] = {"job", "instance", "receiver", "transport"}
        for what in ("exporter_sent", "exporter_send_failed", "exporter_enqueue_failed"):
            known[f"otelcol_{what}_{sig}_total"] = {"job", "instance", "exporter"}
    for name in ("otelcol_exporter_queue_size", "otelcol_exporter_queue_capacity"):
        known[name] = {"job", "instance", "exporter", "data_type"}
    for name in ("otelcol_processor_incoming_items_total", "otelcol_processor_outgoing_items_total"):
        known[name] = {"job", "instance", "processor", "otel_signal"}
    for name in ("otelcol_process_memory_rss_bytes", "otelcol_process_cpu_seconds_total",
                 "otelcol_process_uptime_seconds_total"):
        known[name] = {"job", "instance"}
    for name in (# spanmetrics connector (namespace traces.span.metrics, histogram unit ms); labels:
                 # service_name, span_name, span_kind, status_code and the configured dimensions
                 "traces_span_metrics_calls_total", "traces_span_metrics_duration_milliseconds_bucket",
                 # made by Prometheus, or by the collector's prometheus receiver per COO service
                 "up", "ALERTS", "scrape_duration_seconds", "process_start_time_seconds"):
        known[name] = None
    return known


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset",
             "bool", "inf", "nan"}
_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = _GROUPING.sub(" ", s)
    names = set()
    for m in _IDENT.finditer(s):
        if s[m.end():].lstrip().startswith("(") or m.group(0).lower() in _KEYWORDS:
            continue
        names.add(m.group(0))
    return names


def selector_labels(expr: str) -> list[tuple[str, set[str]]]:
    out = []
    for m in _SELECTOR.finditer(_STRING.sub('""', expr)):
        out.append((m.group(1), set(_MATCHER.findall(m.group(2)))))
    return out


def test_metric_name_extraction():
    assert metric_names('sum by (scope) (increase(coo_budget_exceeded_total{scope="a b"}[5m])) > 0 '
                        'unless x offset 5m') == {"coo_budget_exceeded_total", "x"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(h_bucket[5m]))) > 1e3") == {"h_bucket"}
    assert selector_labels('a{x="1", y=~"2"} / b') == [("a", {"x", "y"})]


def _dashboard_docs() -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def _panels(doc: dict):
    for panel in doc["panels"]:
        yield panel
        yield from panel.get("panels", [])


def _all_exprs() -> list[tuple[str, str]]:
    """(where, expr) of every rule and every dashboard query."""
    out = [(f"rule {r['alert']}", r["expr"]) for r in _rules()]
    for name, doc in _dashboard_docs().items():
        for panel in _panels(doc):
            for t in panel.get("targets", []):
                out.append((f"{name}: {panel['title']}", t["expr"]))
        for ann in doc.get("annotations", {}).get("list", []):
            if ann.get("expr"):
                out.append((f"{name}: annotation {ann['name']}", ann["expr"]))
    return out


def test_every_expression_names_known_metrics_and_labels():
    known = _known_metrics()
    problems = []
    for where, expr in _all_exprs():
        assert "$" not in expr, f"{where}: Grafana variables/macros cannot be checked against Prometheus"
        for name in metric_names(expr):
            if name not in known:
                problems.append(f"{where}: unknown metric {name}")
        for name, labels in selector_labels(expr):
            allowed = known.get(name)
            if allowed is not None and labels - allowed:
                problems.append(f"{where}: {name} has no label(s) {sorted(labels - allowed)}")
    assert not problems, "\n".join(problems)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory):
    """A real Prometheus on a free loopback port with an empty TSDB and nothing to scrape."""
    _need(PROMETHEUS)
    tmp = tmp_path_factory.mktemp("prometheus")
    (tmp / "prometheus.yml").write_text("global:\n  scrape_interval: 1m\n")
    port = _free_port()
    with open(tmp / "prometheus.log", "w") as log:  # the child keeps its own descriptor
        proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--enable-feature=exemplar-storage"],
            stdout=subprocess.DEVNULL, stderr=log)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen(f"{base}/-/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError):
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"prometheus did not start:\n{(tmp / 'prometheus.log').read_text()[-2000:]}")
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _query(base: str, expr: str) -> tuple[int, dict]:
    data = urllib.parse.urlencode({"query": expr}).encode()
    try:
        with urllib.request.urlopen(f"{base}/api/v1/query", data=data, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def test_prometheus_rejects_a_bad_query(prometheus):
    status, body = _query(prometheus, "sum(rate(coo_missions_total[5m])")
    assert status == 400 and body["errorType"] == "bad_data"


def test_every_expression_runs_on_prometheus(prometheus):
    failures = []
    for where, expr in _all_exprs():
        status, body = _query(prometheus, expr)
        if status != 200 or body.get("status") != "success":
            failures.append(f"{where}: {status} {body.get('error')}\n    {expr}")
    assert not failures, "\n".join(failures)


# =================================================================================== Grafana
def _provisioned_uids() -> dict[str, dict]:
    uids = {}
    for path in (GRAFANA / "provisioning" / "datasources").glob("*.yml"):
        for ds in yaml.safe_load(path.read_text())["datasources"]:
            uids[ds["uid"]] = ds
    return uids


def test_grafana_datasources_and_dashboard_provider():
    uids = _provisioned_uids()
    assert uids["prometheus"]["type"] == "prometheus"
    assert uids["jaeger"]["type"] == "jaeger"
    dest = uids["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert {"name": "trace_id", "datasourceUid": "jaeger"} in dest
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert provider["options"]["path"] == "/var/lib/grafana/dashboards"
    grafana = yaml.safe_load(COMPOSE.read_text())["services"]["grafana"]
    assert "./observability/grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana["volumes"]
    assert "./observability/grafana/provisioning:/etc/grafana/provisioning:ro" in grafana["volumes"]


def test_dashboards_parse_and_use_provisioned_datasources():
    uids = _provisioned_uids()
    docs = _dashboard_docs()
    assert set(docs) == {"missions.json", "agents-llm.json", "budget.json", "bus-sandbox.json", "collector.json"}
    seen_uids = set()
    for name, doc in docs.items():
        assert doc["uid"] not in seen_uids, f"{name}: duplicate dashboard uid"
        seen_uids.add(doc["uid"])
        panel_ids = set()
        queries = 0
        for panel in _panels(doc):
            assert panel["id"] not in panel_ids, f"{name}: duplicate panel id {panel['id']}"
            panel_ids.add(panel["id"])
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] in uids, f"{name}: {panel['title']}"
            assert panel["targets"], f"{name}: {panel['title']} has no query"
            for t in panel["targets"]:
                ds = t.get("datasource", panel["datasource"])
                assert ds["uid"] in uids, f"{name}: {panel['title']}"
                assert uids[ds["uid"]]["type"] == ds["type"] == "prometheus"
                assert t["expr"].strip()
                queries += 1
        assert queries >= 6, f"{name}: too few queries"


# ============================================================================ docker-compose
def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _defaults(value: str) -> str:
    """Compose interpolation with an empty environment: ${VAR:-default} -> default."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


def _published(service: dict) -> dict[int, tuple[str, int, str]]:
    """container port -> (host ip, host port, host-port variable) of a service's ports."""
    out = {}
    for spec in service.get("ports", []):
        var = re.search(r"\$\{([A-Za-z0-9_]+)", spec)
        ip, host, container = _defaults(spec).split(":")
        out[int(container)] = (ip, int(host), var.group(1) if var else "")
    return out


def test_compose_validates_against_the_compose_spec_schema():
    import jsonschema

    schema = json.loads(COMPOSE_SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, "\n".join(errors)
    # the schema does catch mistakes
    bad = _compose()
    bad["services"]["nats"]["healthcheck"]["tset"] = ["CMD", "true"]
    assert list(validator.iter_errors(bad))


CONFIG_FILES = {"otelcol": "observability/otelcol/config.yaml", "jaeger": "observability/jaeger/config.yaml",
                "prometheus": "observability/prometheus/prometheus.yml",
                "alertmanager": "observability/alertmanager/alertmanager.yml"}


def test_compose_matches_the_local_stack_components():
    from coo.stack.components import StackSettings, components

    settings = StackSettings.model_construct()  # the defaults, whatever the environment says
    services = _compose()["services"]
    every = components(settings)
    # the local stack's own UI (otel-desktop-viewer): compose users have Grafana and Jaeger's UI
    local_only = {c.name for c in every if c.local_only}
    comps = {c.name: c for c in every if not c.local_only}
    assert set(comps) <= set(services), f"missing in compose: {set(comps) - set(services)}"

    # Every port of StackSettings is published by its component, on 127.0.0.1, host port =
    # container port by default, movable with the same COO_<FIELD> variable.
    prefixes = sorted([*comps, *local_only], key=len, reverse=True)
    for field, info in StackSettings.model_fields.items():
        if not field.endswith("_port") or field == "nats_cluster_port":
            continue   # the route port of the local stack's NATS cluster (COO_NATS_CLUSTER): compose runs one server
        owner = next(p for p in prefixes if field.startswith(p + "_"))
        if owner in local_only:
            continue
        port = info.default
        published = _published(services[owner])
        assert port in published, f"{owner} does not publish {field}={port}"
        assert published[port] == ("127.0.0.1", port, f"COO_{field.upper()}"), (field, published[port])
    for name, service in services.items():
        for ip, _, _ in _published(service).values():
            assert ip == "127.0.0.1", f"{name} publishes beyond loopback"

    for name, comp in comps.items():
        service = services[name]
        for url in (comp.url, comp.health_url):
            if url and urllib.parse.urlsplit(url).port:
                assert urllib.parse.urlsplit(url).port in _published(service), f"{name}: {url}"
        # The same config file: the committed one, or the stack's rendered copy of it.
        if name in CONFIG_FILES:
            committed = ROOT / CONFIG_FILES[name]
            rendered = {"prometheus": render.prometheus_config_path(settings.state),
                        "alertmanager": render.alertmanager_config_path(settings.state)}.get(name)
            args = {a.split("=", 1)[1] if a.startswith("--config.file=") else a for a in comp.command}
            assert str(committed) in args or (rendered and str(rendered) in args), f"{name}: {comp.command}"
            rel = "./" + CONFIG_FILES[name]
            mounts = [v for v in service.get("volumes", []) if v.startswith(rel + ":")]
            assert mounts and mounts[0].endswith(":ro"), f"{name} does not mount {rel}"
        if comp.kind == "service":
            assert service["command"] == ["python", *comp.command[1:]], name
            assert service["build"] == {"context": ".", "dockerfile": "services/Dockerfile"}, name
            env = service["environment"]
            port = urllib.parse.urlsplit(comp.url).port
            assert env[f"COO_{name.upper()}_PORT"] == str(port), name
            assert env[f"COO_{name.upper()}_HOST"] == "0.0.0.0", name
            assert env["COO_NATS_URL"] == "nats://nats:4222"
            assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otelcol:4317"
            assert _defaults(env["COO_LLM_BASE_URL"]) == "http://mockllm:8090/v1"
            assert set(comp.env) - {"COO_AUDIT_LOG"} <= set(env), f"{name}: {set(comp.env) - set(env)}"
            test = service["healthcheck"]["test"]
            assert test[:3] == ["CMD", "python", "-c"] and f"127.0.0.1:{port}/healthz" in test[3], name


def test_compose_services_env_healthchecks_and_secrets():
    doc = _compose()
    services = doc["services"]
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    assert one_shot == {"coo-init", "sandbox-image"}
    for name, service in services.items():
        if name in one_shot or name == "otelcol":  # the collector image has no shell or HTTP client
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
        for dep, cond in (service.get("depends_on") or {}).items():
            if cond["condition"] == "service_healthy":
                assert services[dep].get("healthcheck"), f"{name} waits for {dep}, which has no healthcheck"
    # the collector and Jaeger listen on all interfaces of their container and use the env var
    # names their config files read
    listen = {
        "otelcol": ["COO_OTELCOL_OTLP_GRPC", "COO_OTELCOL_OTLP_HTTP", "COO_OTELCOL_HEALTH",
                    "COO_OTELCOL_PROM_EXPORTER", "COO_OTELCOL_METRICS_HOST"],
        "jaeger": ["COO_JAEGER_OTLP_GRPC", "COO_JAEGER_OTLP_HTTP", "COO_JAEGER_QUERY", "COO_JAEGER_QUERY_GRPC",
                   "COO_JAEGER_HEALTH", "COO_JAEGER_METRICS_HOST"],
    }
    for name, config in (("otelcol", OBS / "otelcol" / "config.yaml"), ("jaeger", OBS / "jaeger" / "config.yaml")):
        referenced = set(re.findall(r"\$\{env:([A-Z0-9_]+)", config.read_text()))
        env = services[name]["environment"]
        assert set(env) <= referenced, f"{name}: {set(env) - referenced} unknown to {config.name}"
        for var in listen[name]:
            assert str(env[var]).startswith("0.0.0.0"), f"{name}: {var}={env[var]}"
    assert services["otelcol"]["environment"]["COO_JAEGER_OTLP_GRPC"] == "jaeger:14317"
    assert services["otelcol"]["image"].endswith(":" + _collector_version())
    sandbox = services["sandbox"]
    assert sandbox["environment"]["COO_SANDBOX_BACKEND"] == "docker"
    assert "${COO_DOCKER_SOCKET:-/var/run/docker.sock}:/var/run/docker.sock" in sandbox["volumes"]
    assert services["sandbox-image"]["image"] == "coo-sandbox:latest"
    assert services["sandbox-image"]["build"]["context"] == "./sandbox"
    assert "coo-data:/var/lib/coo:ro" in services["alertmanager"]["volumes"]
    assert "coo-data:/var/lib/coo" in services["orchestrator"]["volumes"]
    assert "--enable-feature=exemplar-storage" in services["prometheus"]["command"]
    # No secret in the file: values of secret-named variables come from .env.
    text = COMPOSE.read_text()
    for var in ("COO_API_TOKEN", "COO_LLM_API_KEY", "GF_SECURITY_ADMIN_PASSWORD"):
        for line in text.splitlines():
            if re.match(rf"\s*{var}:", line):
                assert "${" in line, f"a literal value for {var} in docker-compose.yml"
    example = (ROOT / ".env.example").read_text()
    for var in ("COO_API_TOKEN", "COO_LLM_API_KEY"):
        assert re.search(rf"^{var}=", example, re.M), f".env.example lacks {var}"


def _collector_version() -> str:
    text = (OBS / "otelcol" / "builder-config.yaml").read_text()
    return re.search(r"opentelemetry-collector-contrib/\S+ v(\d+\.\d+\.\d+)", text).group(1)


def test_services_dockerfile_and_dockerignore():
    text = (ROOT / "services" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.M)
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.M), "the image runs as non-root"
    assert "pip install" in text and "[dev]" not in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", "var", ".git", ".pytest_cache", "**/__pycache__", ".env"):
        assert entry in ignored, entry
