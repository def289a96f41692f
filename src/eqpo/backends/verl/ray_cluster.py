"""A Ray cluster over the nodes of a SLURM allocation, for multi-node verl training (``train.nnodes > 1``).

The ``train_verl`` rule asks SLURM for ``nodes=<train.nnodes>`` and ``gres=gpu:<train.gpus>`` (GRES are
per node; the plugin's ``gpu`` resource becomes ``--gpus=N``, a job total that SLURM may split unevenly).
Snakemake's SLURM job step runs the rule on one node of that allocation; :func:`start_ray_cluster`
then

1. reads the allocation's nodes (``scontrol show hostnames $SLURM_JOB_NODELIST``), this host first;
2. starts the Ray head here as a background process of this job:
   ``ray start --head --port=<port> --ray-client-server-port=<port> --dashboard-agent-listen-port=<port>
   --include-dashboard=false --num-gpus=<gpus> [--num-cpus=<threads>] --block``. The ports are
   chosen free on this host (:func:`free_port`), so two jobs sharing a node never meet on Ray's
   default 6379, 10001 or 52365, and ``--block`` keeps the head a child of this job, so stopping it
   never touches another job's Ray (``ray stop`` would end every Ray process of the node);
3. starts one worker per other node as a background job step:
   ``srun --nodes=1 --ntasks=1 -w <node> ray start --address=<head>:<port> --num-gpus=<gpus> ... --block``
   (the step gets that node's GPUs: a step is allocated the job's GRES by default);
4. polls ``ray status --address=<head>:<port>`` until all nodes are up, else raises
   :class:`RayClusterError` after ``timeout_s`` (and stops what it started).

verl's driver then joins with ``+ray_kwargs.ray_init.address=<head>:<port>`` (main_ppo passes
``ray_kwargs.ray_init`` to ``ray.init``). :func:`stop_ray_cluster` ends the workers, then the head.

Every process call goes through ``runner`` (default: the :mod:`subprocess` module; it must provide
``run`` and ``Popen``), so the command sequence can be tested without SLURM or Ray.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PORT = 6379  # Ray's default GCS port; never used here (see free_port)


class RayClusterError(RuntimeError):
    """The Ray cluster over the SLURM allocation could not be started."""


@dataclass
class RayCluster:
    """A started cluster: its address (``host:port``), nodes (head first), the head process and the
    worker steps."""

    address: str
    nodes: list[str]
    workers: list[Any] = field(default_factory=list)
    ray: str = "ray"
    head: Any = None


def free_port() -> int:
    """A TCP port that is free on this host now (the kernel's choice for port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return sock.getsockname()[1]


def ray_executable() -> str:
    """The ``ray`` CLI of this Python environment (shared filesystem: the same path on every node)."""
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else "ray"


def node_list(env: Mapping[str, str], runner: Any = subprocess) -> list[str]:
    """The host names of the SLURM allocation (``scontrol show hostnames <SLURM_JOB_NODELIST>``)."""
    compact = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not compact:
        raise RayClusterError(
            "train.nnodes > 1 needs a SLURM allocation of that many nodes, but "
            "SLURM_JOB_NODELIST is not set: run the train_verl rule with `--profile slurm`"
        )
    result = runner.run(["scontrol", "show", "hostnames", compact], capture_output=True, text=True, env=dict(env))
    if result.returncode != 0:
        raise RayClusterError(f"`scontrol show hostnames {compact}` failed ({result.returncode}): {result.stderr}")
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def head_first(nodes: Sequence[str], this_host: str) -> list[str]:
    """``nodes`` with this host (where the head is started, compared by short name) first."""
    short = this_host.split(".")[0]
    here = [n for n in nodes if n.split(".")[0] == short]
    if not here:
        raise RayClusterError(
            f"this host ({this_host}) is not in the allocation's nodes {list(nodes)}; the Ray "
            "head must run where verl's driver runs"
        )
    return [here[0], *[n for n in nodes if n != here[0]]]


_SECTION = re.compile(r"^(Active|Idle):\s*$")
_COUNT = re.compile(r"^\s+(\d+)\s+\S+\s*$")


def count_nodes(status: str) -> int:
    """The number of live nodes in ``ray status`` output (the ``Active:`` and ``Idle:`` sections,
    lines `` <count> <node type>``)."""
    total, inside = 0, False
    for line in status.splitlines():
        if _SECTION.match(line):
            inside = True
        elif line and not line[0].isspace():
            inside = False
        elif inside and (match := _COUNT.match(line)):
            total += int(match.group(1))
    return total


def start_ray_cluster(
    nnodes: int,
    gpus_per_node: int,
    env: Mapping[str, str] | None = None,
    runner: Any = subprocess,
    *,
    num_cpus: int | None = None,
    ports: Callable[[], int] = free_port,
    timeout_s: float = 600.0,
    poll_s: float = 5.0,
    ray: str | None = None,
    this_host: str | None = None,
    resolve: Callable[[str], str] = socket.gethostbyname,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RayCluster:
    """Start Ray over the ``nnodes`` nodes of this SLURM job and wait until all have joined.

    ``env`` is the environment of every Ray process (give verl's: it loads our extension); workers
    inherit it through ``srun`` (``--export=ALL``). Raises :class:`RayClusterError` when the
    allocation has another number of nodes, a worker step exits, or not all nodes joined within
    ``timeout_s`` seconds; in every error case the processes already started are stopped.
    """
    if nnodes < 2:
        raise ValueError(f"start_ray_cluster is for nnodes >= 2, got {nnodes}")
    env = dict(os.environ if env is None else env)
    ray = ray or ray_executable()
    nodes = node_list(env, runner)
    if len(nodes) != nnodes:
        raise RayClusterError(
            f"train.nnodes = {nnodes} but the SLURM allocation has {len(nodes)} node(s) "
            f"{nodes}; the rule must request nodes={nnodes}"
        )
    nodes = head_first(nodes, this_host or socket.gethostname())
    port, client_port, agent_port = ports(), ports(), ports()
    address = f"{resolve(nodes[0])}:{port}"
    resources = [
        f"--num-gpus={gpus_per_node}",
        *([f"--num-cpus={num_cpus}"] if num_cpus else []),
        f"--dashboard-agent-listen-port={agent_port}",
    ]
    cluster = RayCluster(address=address, nodes=list(nodes), ray=ray)
    cluster.head = runner.Popen(
        [
            ray,
            "start",
            "--head",
            f"--port={port}",
            f"--ray-client-server-port={client_port}",
            "--include-dashboard=false",
            *resources,
            "--block",
        ],
        env=env,
    )
    try:
        for node in nodes[1:]:
            cluster.workers.append(
                runner.Popen(
                    [
                        "srun",
                        "--nodes=1",
                        "--ntasks=1",
                        "-w",
                        node,
                        ray,
                        "start",
                        f"--address={address}",
                        *resources,
                        "--block",
                    ],
                    env=env,
                )
            )
        wait_for_nodes(cluster, nnodes, env, runner, timeout_s=timeout_s, poll_s=poll_s, clock=clock, sleep=sleep)
    except BaseException:
        stop_ray_cluster(cluster)
        raise
    return cluster


def wait_for_nodes(
    cluster: RayCluster,
    nnodes: int,
    env: Mapping[str, str],
    runner: Any = subprocess,
    *,
    timeout_s: float,
    poll_s: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll ``ray status`` until ``nnodes`` nodes are alive; :class:`RayClusterError` on timeout or
    when a worker step has exited."""
    deadline, seen, last = clock() + timeout_s, 0, ""
    while True:
        if cluster.head is not None and cluster.head.poll() is not None:
            raise RayClusterError(
                f"the Ray head on {cluster.nodes[0]} exited with status {cluster.head.returncode} "
                "before the cluster was up; its output is above in this log"
            )
        for node, worker in zip(cluster.nodes[1:], cluster.workers, strict=False):
            if worker.poll() is not None:
                raise RayClusterError(
                    f"the Ray worker step on {node} exited with status {worker.returncode} "
                    "before the cluster was up; its output is above in this log"
                )
        result = runner.run(
            [cluster.ray, "status", f"--address={cluster.address}"], capture_output=True, text=True, env=dict(env)
        )
        last = result.stdout if result.returncode == 0 else result.stderr
        seen = count_nodes(result.stdout) if result.returncode == 0 else 0
        if seen >= nnodes:
            return
        if clock() >= deadline:
            raise RayClusterError(
                f"only {seen} of {nnodes} Ray nodes joined {cluster.address} within {timeout_s:g} s "
                f"(nodes {cluster.nodes}); last `ray status`:\n{last.strip()}"
            )
        sleep(poll_s)


def stop_ray_cluster(cluster: RayCluster, grace_s: float = 30.0) -> None:
    """Stop the worker steps (SIGTERM, which srun forwards to ``ray start --block``), then the head
    (SIGTERM to its ``--block`` process, which stops the Ray processes it started); each is killed
    after ``grace_s``. Only this job's processes are signalled. Never raises for a process that is
    already gone."""
    for group in (cluster.workers, [cluster.head] if cluster.head is not None else []):
        for proc in group:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in group:
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
