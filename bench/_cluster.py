"""A Ray cluster of several nodes on this machine, with the Distillery stack on it.

Ray's own multi-node harness (``ray.cluster_utils.Cluster``: one raylet per node, each
advertising its own resources) with one node per role; ``node_roles`` places each
deployment on its role's node. The chaos test (tests/chaos/test_node_loss.py) and
``bench/cluster.py`` share it. One Serve proxy, on the head: every node shares one host,
and a proxy per node would contend for one port.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench._common import free_port

__all__ = ["NodeCluster", "node_cluster"]

ROLES = {
    "ingress": "ingress",
    "student": "student",
    "teacher": "teacher",
    "ledger": "ingress",
    "trainer": "trainer",
}


class NodeCluster:
    def __init__(self, cluster: Any, nodes: dict[str, Any], stack: Any) -> None:
        self.cluster = cluster
        self.nodes = nodes
        self.stack = stack

    @property
    def url(self) -> str:
        return str(self.stack.url)

    def kill(self, role: str) -> list[int]:
        """SIGKILL of the node's raylet and every worker it started; the pids killed."""
        import psutil

        node = self.nodes.pop(role)
        raylet = node.all_processes["raylet"][0].process.pid
        workers = [p.pid for p in psutil.Process(raylet).children(recursive=True)]
        self.cluster.remove_node(node, allow_graceful=False)
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return [raylet, *workers]

    def add(self, role: str) -> None:
        self.nodes[role] = self.cluster.add_node(num_cpus=1, resources={role: 1})

    def placement(self) -> dict[str, set[str]]:
        """Deployment name -> the node ids its live replicas run on."""
        from ray.util.state import list_actors

        out: dict[str, set[str]] = {}
        for actor in list_actors(filters=[("state", "=", "ALIVE")], limit=1000):
            name = actor.name or ""
            if name.startswith("SERVE_REPLICA::distillery#") and actor.node_id is not None:
                out.setdefault(name.split("#")[1], set()).add(actor.node_id)
        return out


@contextlib.contextmanager
def node_cluster(
    models: Path, var: Path, *, nodes: int = 3, ingress_replicas: int = 2, **settings: Any
) -> Iterator[NodeCluster]:
    """``nodes`` 3: a head (roles ``ingress``: the proxy, the ingress replicas, the shared
    ledger; and ``trainer``: a refresh's training and gate), a ``teacher`` node and a
    ``student`` node, one CPU each beside the head's two; ``nodes`` 1: the head holds every
    role. The student as its own deployment of two replicas, both tiers on transformers;
    model versions at a ``file://`` URL (``registry_url``), pulled into a cache by digest;
    ``settings`` override the rest."""
    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    from distillery._stack import LocalStack
    from distillery.settings import load_settings

    if ray.is_initialized():
        ray.shutdown()
    head_roles = {"ingress": 1, "trainer": 1}
    if nodes == 1:
        head_roles |= {"student": 1, "teacher": 1}
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "resources": head_roles})
    try:
        found = (
            {role: cluster.add_node(num_cpus=1, resources={role: 1}) for role in ("teacher", "student")}
            if nodes > 1
            else {}
        )
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        port = free_port()
        base: dict[str, Any] = {
            "models_dir": str(models),
            "var_dir": str(var),
            "server": {"port": port, "fast_path": False, "ingress_replicas": ingress_replicas},
            "student_placement": "deployment",
            "student": {"kind": "transformers", "num_replicas": 2, "num_threads": 1},
            "teacher": {"kind": "transformers", "num_threads": 1},
            "node_roles": ROLES,
            "registry_url": f"file://{var / 'bucket'}",
        }
        for key, value in settings.items():
            base[key] = {**base[key], **value} if isinstance(base.get(key), dict) else value
        loaded = load_settings(**base)
        server = loaded.server
        http = {"host": server.host, "port": server.port, "request_timeout_s": server.request_timeout_s}
        serve.start(proxy_location="HeadOnly", http_options=http)  # run_app then finds it started
        with LocalStack(loaded, loop=False) as stack:
            yield NodeCluster(cluster, found, stack)
    finally:
        if ray.is_initialized():
            serve.shutdown()  # type: ignore[no-untyped-call]
            ray.shutdown()
        cluster.shutdown()  # type: ignore[no-untyped-call]
