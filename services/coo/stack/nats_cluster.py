"""NATS for the local stack: one JetStream server, or a cluster of several on loopback.

``COO_NATS_CLUSTER=3`` (``coo up --nats-cluster 3``) runs three ``nats-server`` processes, each
supervised on its own: node *i* (from 1) listens for clients on ``COO_NATS_PORT + i - 1``, serves
monitoring on ``COO_NATS_MONITOR_PORT + i - 1`` and routes to the other nodes on
``COO_NATS_CLUSTER_PORT + i - 1``; it keeps its JetStream data in ``<state>/nats-<i>``. Every
service gets every node's URL (``COO_NATS_URL``, comma-separated: the client fails over) and
``COO_NATS_REPLICAS`` = 3, so every stream and KV bucket has a copy on each node and survives the
loss of one (:mod:`coo.common.declare`).

Each node's configuration (0600) holds the same users and permissions as the single server
(:mod:`coo.stack.nats_auth`) plus its ``cluster`` block. Routes authenticate too: a ``route`` user
whose random password is generated once into ``<state>/secrets/nats-route.password`` (0600), so a
local process cannot join the cluster by knowing the ports.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path

from coo.stack import nats_auth
from coo.stack.render import atomic_write

#: The cluster's name (every node's ``cluster.name``); one server runs without a cluster block.
CLUSTER_NAME = "coo-local"
ROUTE_USER = "route"


@dataclass(frozen=True)
class Node:
    """One server of the local stack's NATS."""

    index: int          # from 1
    name: str           # nats-server's -n / server_name (unique in the cluster)
    component: str      # its program in supervisord ("nats" alone, "nats-<i>" in a cluster)
    host: str
    port: int
    monitor_port: int
    route_port: int
    data_dir: Path
    config: Path

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.monitor_port}"


def nodes(*, host: str, state: Path, size: int, port: int, monitor_port: int, route_port: int,
          server_name: str) -> list[Node]:
    """The servers of a NATS of ``size`` nodes (1: the single server, as before clusters existed)."""
    if size < 1:
        raise ValueError(f"COO_NATS_CLUSTER must be 1 or more, not {size}")
    if size == 1:
        return [Node(1, server_name, "nats", host, port, monitor_port, route_port, state / "nats",
                     nats_auth.server_config_path(state))]
    return [Node(i, f"{server_name}-{i}", f"nats-{i}", host, port + i - 1, monitor_port + i - 1,
                 route_port + i - 1, state / f"nats-{i}", state / f"nats-{i}" / "nats.conf")
            for i in range(1, size + 1)]


def route_password(state: Path) -> str:
    """The route password, made once (0600 file, 0700 directory) and reused."""
    path = nats_auth.secrets_dir(state) / f"nats-{ROUTE_USER}.password"
    if not path.exists() or not path.read_text().strip():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.parent.chmod(0o700)
        atomic_write(path, secrets.token_urlsafe(32) + "\n", mode=0o600)
    return path.read_text().strip()


def cluster_block(node: Node, peers: list[Node], password: str) -> str:
    """The ``cluster { }`` of one node: its route listener, the other nodes, route credentials."""
    routes = [f"nats-route://{ROUTE_USER}:{password}@{p.host}:{p.route_port}" for p in peers if p is not node]
    block = {
        "name": CLUSTER_NAME,
        "listen": f"{node.host}:{node.route_port}",
        "routes": routes,
        "authorization": {"user": ROUTE_USER, "password": password},
    }
    return "cluster " + json.dumps(block, indent=2) + "\n"


def write_configs(state: Path, all_nodes: list[Node]) -> nats_auth.NatsAuth:
    """Every node's configuration: users and permissions, and in a cluster its routes."""
    if len(all_nodes) == 1:
        return nats_auth.prepare(state, server_name=all_nodes[0].name)
    password = route_password(state)
    auth = nats_auth.NatsAuth.for_state(state).ensure_passwords()
    for node in all_nodes:
        auth.server_name = node.name
        node.data_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(node.config, auth.server_config() + cluster_block(node, all_nodes, password), mode=0o600)
    return auth
