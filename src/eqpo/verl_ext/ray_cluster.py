"""A Ray cluster over the nodes of a SLURM allocation, for multi-node verl training (``train.nnodes > 1``).

The ``train_verl`` rule asks SLURM for ``nodes=<train.nnodes>`` and ``gres=gpu:<train.gpus>`` (GRES are
per node; the plugin's ``gpu`` resource becomes ``--gpus=N``, a job total that SLURM may split unevenly).
Snakemake's SLURM job step runs the rule on one node of that allocation; :func:`start_ray_cluster`
then

1. reads the allocation's nodes (``scontrol show hostnames $SLURM_JOB_NODELIST``), this host first;
2. starts the Ray head here: ``ray start --head --port=<port> --num-gpus=<gpus>`` (daemonized);
3. starts one worker per other node as a background job step:
   ``srun --nodes=1 --ntasks=1 -w <node> ray start --address=<head>:<port> --num-gpus=<gpus> --block``
   (the step gets that node's GPUs: a step is allocated the job's GRES by default);
4. polls ``ray status --address=<head>:<port>`` until all nodes are up, else raises
   :class:`RayClusterError` after ``timeout_s`` (and stops what it started).

verl's driver then joins with ``+ray_kwargs.ray_init.address=<head>:<port>`` (main_ppo passes
``ray_kwargs.ray_init`` to ``ray.init``). :func:`stop_ray_cluster` ends the workers and the head.

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

DEFAULT_PORT = 6379


class RayClusterError(RuntimeError):
    """The Ray cluster over the SLURM allocation could not be started."""


@dataclass
class RayCluster:
    """A started cluster: its address (``host:port``), nodes (head first) and the worker steps."""

    address: str
    nodes: list[str]
    workers: list[Any] = field(default_factory=list)
    ray: str = "ray"


def ray_executable() -> str:
    """The ``ray`` CLI of this Python environment (shared filesystem: the same path on every node)."""
    candidate = Path(sys.executable).parent / "ray"
    return str(candidate) if candidate.exists() else "ray"


def node_list(env: Mapping[str, str], runner: Any = subprocess) -> list[str]:
    """The host names of the SLURM allocation (``scontrol show hostnames <SLURM_JOB_NODELIST>``)."""
    compact = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not compact:
        raise RayClusterError("train.nnodes > 1 needs a SLURM allocation of that many nodes, but "
                              "SLURM_JOB_NODELIST is not set: run the train_verl rule with `--profile slurm`")
    result = runner.run(["scontrol", "show", "hostnames", compact], capture_output=True, text=True,
                        env=dict(env))
    if result.returncode != 0:
        raise RayClusterError(f"`scontrol show hostnames {compact}` failed ({result.returncode}): {result.stderr}")
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def head_first(nodes: Sequence[str], this_host: str) -> list[str]:
    """``nodes`` with this host (where the head is started, compared by short name) first."""
    short = this_host.split(".")[0]
    here = [n for n in nodes if n.split(".")[0] == short]
    if not here:
        raise RayClusterError(f"this host ({this_host}) is not in the allocation's nodes {list(nodes)}; the Ray "
                              "head must run where verl's driver runs")
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


def start_ray_cluster(nnodes: int, gpus_per_node: int, env: Mapping[str, str] | None = None,
                      runner: Any = subprocess, *, port: int = DEFAULT_PORT, timeout_s: float = 600.0,
                      poll_s: float = 5.0, ray: str | None = None, this_host: str | None = None,
                      resolve: Callable[[str], str] = socket.gethostbyname,
                      clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> RayCluster:
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
        raise RayClusterError(f"train.nnodes = {nnodes} but the SLURM allocation has {len(nodes)} node(s) "
                              f"{nodes}; the rule must request nodes={nnodes}")
    nodes = head_first(nodes, this_host or socket.gethostname())
    address = f"{resolve(nodes[0])}:{port}"
    head = runner.run([ray, "start", "--head", f"--port={port}", f"--num-gpus={gpus_per_node}"],
                      capture_output=True, text=True, env=env)
    if head.returncode != 0:
        raise RayClusterError(f"`ray start --head` failed on {nodes[0]} ({head.returncode}): {head.stderr}")
    cluster = RayCluster(address=address, nodes=list(nodes), ray=ray)
    try:
        for node in nodes[1:]:
            cluster.workers.append(runner.Popen(
                ["srun", "--nodes=1", "--ntasks=1", "-w", node, ray, "start", f"--address={address}",
                 f"--num-gpus={gpus_per_node}", "--block"], env=env))
        wait_for_nodes(cluster, nnodes, env, runner, timeout_s=timeout_s, poll_s=poll_s, clock=clock, sleep=sleep)
    except BaseException:
        stop_ray_cluster(cluster, env, runner)
        raise
    return cluster


def wait_for_nodes(cluster: RayCluster, nnodes: int, env: Mapping[str, str], runner: Any = subprocess, *,
                   timeout_s: float, poll_s: float, clock: Callable[[], float] = time.monotonic,
                   sleep: Callable[[float], None] = time.sleep) -> None:
    """Poll ``ray status`` until ``nnodes`` nodes are alive; :class:`RayClusterError` on timeout or
    when a worker step has exited."""
    deadline, seen, last = clock() + timeout_s, 0, ""
    while True:
        for node, worker in zip(cluster.nodes[1:], cluster.workers):
            if worker.poll() is not None:
                raise RayClusterError(f"the Ray worker step on {node} exited with status {worker.returncode} "
                                      "before the cluster was up; its output is above in this log")
        result = runner.run([cluster.ray, "status", f"--address={cluster.address}"], capture_output=True,
                            text=True, env=dict(env))
        last = result.stdout if result.returncode == 0 else result.stderr
        seen = count_nodes(result.stdout) if result.returncode == 0 else 0
        if seen >= nnodes:
            return
        if clock() >= deadline:
            raise RayClusterError(
                f"only {seen} of {nnodes} Ray nodes joined {cluster.address} within {timeout_s:g} s "
                f"(nodes {cluster.nodes}); last `ray status`:\n{last.strip()}")
        sleep(poll_s)


def stop_ray_cluster(cluster: RayCluster, env: Mapping[str, str] | None = None, runner: Any = subprocess,
                     grace_s: float = 30.0) -> None:
    """Stop the worker steps (SIGTERM, which srun forwards to ``ray start --block``; killed after
    ``grace_s``) and the head (``ray stop``). Never raises for a process that is already gone."""
    for worker in cluster.workers:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
    for worker in cluster.workers:
        try:
            worker.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    runner.run([cluster.ray, "stop"], capture_output=True, text=True,
               env=dict(os.environ if env is None else env))
