"""The local stack's NATS cluster (``COO_NATS_CLUSTER=3``): its components, configuration files, and
the real servers started from the component table, with the services' users declaring R3 topology.
Node loss under missions is in the reliability suite (tests/reliability/test_cluster.py)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import stat
import subprocess
import time

import httpx
import nats
import pytest

from coo.common import topology
from coo.common.config import CommonSettings
from coo.common.declare import declare
from coo.stack import nats_auth
from coo.stack.components import StackSettings, components, prepare
from tests.natsserver import free_port


def _free_run(n: int) -> int:
    """A port p with p .. p+n-1 all free on loopback."""
    for _ in range(200):
        base = free_port()
        socks = []
        try:
            for i in range(n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + i))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no run of free ports")


def _settings(tmp_path, size: int) -> StackSettings:
    return StackSettings(state_dir=tmp_path / "state", nats_cluster=size, nats_port=_free_run(size),
                         nats_monitor_port=_free_run(size), nats_cluster_port=_free_run(size))


def test_one_server_by_default_a_cluster_when_asked(tmp_path):
    one = StackSettings(state_dir=tmp_path / "one")
    parts = {c.name: c for c in components(one)}
    assert "nats" in parts and not any(n.startswith("nats-") for n in parts)
    assert parts["orchestrator"].env["COO_NATS_URL"] == "nats://127.0.0.1:4222"
    assert parts["orchestrator"].env["COO_NATS_REPLICAS"] == "1"

    three = StackSettings(state_dir=tmp_path / "three", nats_cluster=3)
    parts = {c.name: c for c in components(three)}
    nodes = [parts[f"nats-{i}"] for i in (1, 2, 3)]
    assert "nats" not in parts
    assert [n.url for n in nodes] == ["nats://127.0.0.1:4222", "nats://127.0.0.1:4223", "nats://127.0.0.1:4224"]
    data_dirs = {n.command[n.command.index("-sd") + 1] for n in nodes}
    names = {n.command[n.command.index("-n") + 1] for n in nodes}
    assert len(data_dirs) == len(names) == 3
    for service in ("orchestrator", "agent", "budget", "sandbox"):
        assert parts[service].env["COO_NATS_URL"] == ",".join(n.url for n in nodes)
        assert parts[service].env["COO_NATS_REPLICAS"] == "3"


def test_cluster_configs_route_to_the_others_with_credentials_kept_out_of_commands(tmp_path):
    s = _settings(tmp_path, 3)
    prepare(s)
    nodes = s.nats_nodes()
    password_file = nats_auth.secrets_dir(s.state) / "nats-route.password"
    password = password_file.read_text().strip()
    assert stat.S_IMODE(password_file.stat().st_mode) == 0o600 and len(password) >= 32
    for node in nodes:
        text = node.config.read_text()
        assert stat.S_IMODE(node.config.stat().st_mode) == 0o600
        assert f'server_name: "{node.name}"' in text and f'"listen": "127.0.0.1:{node.route_port}"' in text
        others = [n for n in nodes if n is not node]
        for other in others:
            assert f"nats-route://route:{password}@127.0.0.1:{other.route_port}" in text
        assert f"127.0.0.1:{node.route_port}\"," not in text.split('"routes"')[1]  # no route to itself
    prepare(s)  # a second start keeps the route password
    assert password_file.read_text().strip() == password
    for c in components(s):
        assert password not in " ".join(c.command) and password not in str(c.env)


@pytest.fixture
def cluster_from_components(tmp_path):
    """The three nats-server commands of the component table, as supervisord would run them."""
    s = _settings(tmp_path, 3)
    prepare(s)
    parts = [c for c in components(s) if c.name.startswith("nats-")]
    procs = [subprocess.Popen(c.command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT) for c in parts]
    try:
        deadline = time.monotonic() + 30
        for c in parts:
            while True:
                assert time.monotonic() < deadline, f"{c.name} not healthy: {c.health_url}"
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(c.health_url, timeout=1).status_code == 200:
                        break
                time.sleep(0.1)
        yield s
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)


def test_each_service_declares_its_part_with_three_replicas(cluster_from_components):
    s = cluster_from_components
    auth = nats_auth.NatsAuth.for_state(s.state)

    def settings(user: str, replicas: int) -> CommonSettings:
        return CommonSettings(nats_url=s.nats_url(), nats_user=user, nats_password=auth.password(user),
                              nats_replicas=replicas)

    async def main() -> None:
        admin = await nats.connect(s.nats_url().split(","), user="admin", password=auth.password("admin"))
        js = admin.jetstream()
        conns = []
        try:
            # a bucket that exists with one copy (a single server's state) is scaled to three
            await js.create_key_value(bucket=topology.BUCKET_SANDBOX_RUNS, history=1)
            for user in ("orchestrator", "agent", "budget", "sandbox"):
                conf = settings(user, 3)
                nc = await nats.connect(conf.nats_servers(), user=user, password=auth.password(user),
                                        inbox_prefix=topology.inbox_prefix(user))
                conns.append(nc)
                await declare(nc.jetstream(), conf, wait_seconds=30)
            streams = [*topology.ALL_STREAMS, *(topology.bucket_stream(b.bucket) for b in topology.buckets())]
            for name in streams:
                info = await js.stream_info(name)
                assert info.config.num_replicas == 3, (name, info.config.num_replicas)
                deadline = time.monotonic() + 30   # a scaled stream gains its peers in the background
                while not (info.cluster and info.cluster.leader and len(info.cluster.replicas or []) == 2):
                    assert time.monotonic() < deadline, (name, info.cluster)
                    await asyncio.sleep(0.2)
                    info = await js.stream_info(name)
            for bucket in topology.buckets():   # reads through the leader only: a follower may be behind
                assert not (await js.stream_info(topology.bucket_stream(bucket.bucket))).config.allow_direct
            for spec in topology.consumers().values():
                info = await js.consumer_info(spec.stream, spec.name)
                assert info.cluster is not None and len(info.cluster.replicas or []) == 2, spec.name
        finally:
            for nc in conns:
                await nc.close()
            await admin.close()

    asyncio.run(main())


def test_status_and_down_see_the_size_the_stack_was_started_with(tmp_path, monkeypatch):
    monkeypatch.delenv("COO_NATS_CLUSTER", raising=False)
    state = tmp_path / "state"
    assert StackSettings(state_dir=state).nats_cluster == 1
    StackSettings(state_dir=state, nats_cluster=3).record_nats_cluster()    # coo up --nats-cluster 3
    later = StackSettings(state_dir=state)                                   # coo status, coo down
    assert later.nats_cluster == 3 and [c.name for c in components(later) if c.kind == "infra"] == [
        "nats-1", "nats-2", "nats-3"]
    monkeypatch.setenv("COO_NATS_CLUSTER", "1")                              # said explicitly: that wins
    assert StackSettings(state_dir=state).nats_cluster == 1


def test_coo_health_checks_every_node_of_the_cluster(cluster_from_components, monkeypatch):
    from coo.cli.health_cmd import health_checks

    s = cluster_from_components
    for key, value in {"COO_STATE_DIR": s.state, "COO_NATS_CLUSTER": 3, "COO_NATS_PORT": s.nats_port,
                       "COO_NATS_MONITOR_PORT": s.nats_monitor_port,
                       "COO_NATS_CLUSTER_PORT": s.nats_cluster_port}.items():
        monkeypatch.setenv(key, str(value))
    rows = {c["check"]: c for c in health_checks()}
    for i in (1, 2, 3):
        assert rows[f"nats-{i} + jetstream"]["ok"], rows[f"nats-{i} + jetstream"]
    assert "nats + jetstream" not in rows
