"""Multi-node verl (train.nnodes > 1): the Ray cluster over a SLURM allocation (commands checked with a
fake runner: no SLURM, no Ray started), the address override against verl's Hydra config, run_training
with a cluster, and the SLURM resources of the train_verl rule."""

from __future__ import annotations

import copy
import importlib.util
import signal
import socket
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from eqpo.backends.verl import launch
from eqpo.backends.verl.launch import RunPaths, build_overrides
from eqpo.backends.verl.ray_cluster import RayClusterError, count_nodes, head_first, start_ray_cluster, stop_ray_cluster
from eqpo.runs.settings import RunSettings

REPO = Path(__file__).resolve().parents[3]


def _sibling(name: str):
    """A test module of this folder, loaded for its helpers only (its tests and fixtures are not
    collected here)."""
    spec = importlib.util.spec_from_file_location(f"_eqpo_{name}", Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


test_launch = _sibling("test_launch")  # compose_overrides, export, FakeVerl, PAPER
test_slurm_profile = _sibling("test_slurm_profile")  # dry_run, jobs
PAPER = test_launch.PAPER


def ray_status(nodes: int, idle: int = 0) -> str:
    """``ray status`` as Ray 2.x prints it (autoscaler/_private/util.py:format_info_string)."""
    active = "\n".join(f" 1 node_{i:040x}" for i in range(nodes)) or " (no active nodes)"
    idle_lines = "\n".join(f" 1 node_{100 + i:040x}" for i in range(idle)) or " (no idle nodes)"
    return (
        f"======== Autoscaler status: 2026-01-01 00:00:00 ========\nNode status\n{'-' * 40}\n"
        f"Active:\n{active}\nIdle:\n{idle_lines}\nPending:\n (no pending nodes)\nRecent failures:\n"
        f" (no failures)\n\nResources\n{'-' * 40}\nUsage:\n 0.0/96.0 CPU\n 0.0/12.0 GPU\n"
    )


class FakeProc:
    """A background ``srun ... ray start --block`` step."""

    def __init__(self, argv, exit_status=None):
        self.argv, self.returncode, self.signals = argv, exit_status, []

    def poll(self):
        return self.returncode

    def send_signal(self, sig):
        self.signals.append(sig)
        self.returncode = -sig

    def wait(self, timeout=None):
        return self.returncode

    def kill(self):
        self.returncode = -9


class FakeRunner:
    """Stands in for the subprocess module: records every command; ``scontrol`` prints ``nodes``,
    ``ray status`` prints the next of ``joined`` (node counts; the last one repeats)."""

    def __init__(self, nodes, joined, worker_exit=None):
        self.nodes, self.joined, self.worker_exit = nodes, list(joined), worker_exit
        self.commands, self.procs, self.envs = [], [], []

    def run(self, argv, capture_output=False, text=False, env=None, **_):
        self.commands.append(list(argv))
        self.envs.append(env)
        out = ""
        if argv[:3] == ["scontrol", "show", "hostnames"]:
            out = "\n".join(self.nodes) + "\n"
        elif argv[1:2] == ["status"]:
            out = ray_status(self.joined.pop(0) if len(self.joined) > 1 else self.joined[0])
        return subprocess.CompletedProcess(argv, 0, stdout=out, stderr="")

    def Popen(self, argv, env=None, **_):  # noqa: N802 (subprocess.Popen's name)
        self.commands.append(list(argv))
        self.envs.append(env)
        self.procs.append(FakeProc(argv, self.worker_exit if argv[0] == "srun" else None))
        return self.procs[-1]


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


ENV = {"SLURM_JOB_NODELIST": "gpu[01-03]", "PATH": "/bin", "VERL_USE_EXTERNAL_MODULES": "eqpo.backends.verl"}
IPS = {"gpu01": "10.0.0.1", "gpu02": "10.0.0.2", "gpu03": "10.0.0.3"}


def fixed_ports(*ports):
    """Stands in for free_port: hands out these ports in order."""
    it = iter(ports)
    return lambda: next(it)


def start(runner, clock=None, **kwargs):
    clock = clock or FakeClock()
    kwargs.setdefault("ports", fixed_ports(41000, 41001, 41002))
    return start_ray_cluster(
        3,
        4,
        ENV,
        runner,
        ray="ray",
        this_host="gpu01",
        resolve=IPS.__getitem__,
        clock=clock,
        sleep=clock.sleep,
        poll_s=5,
        timeout_s=60,
        **kwargs,
    )


# ----------------------------------------------------------------------------------------------
# The cluster
# ----------------------------------------------------------------------------------------------


def test_three_nodes_start_head_here_and_one_worker_step_per_other_node():
    runner, clock = FakeRunner(["gpu01", "gpu02", "gpu03"], joined=[1, 2, 3]), FakeClock()
    cluster = start(runner, clock, num_cpus=32)
    assert cluster.address == "10.0.0.1:41000" and cluster.nodes == ["gpu01", "gpu02", "gpu03"]
    resources = ["--num-gpus=4", "--num-cpus=32", "--dashboard-agent-listen-port=41002"]
    worker = ["ray", "start", "--address=10.0.0.1:41000", *resources, "--block"]
    status = ["ray", "status", "--address=10.0.0.1:41000"]
    assert runner.commands == [
        ["scontrol", "show", "hostnames", "gpu[01-03]"],
        [
            "ray",
            "start",
            "--head",
            "--port=41000",
            "--ray-client-server-port=41001",
            "--include-dashboard=false",
            *resources,
            "--block",
        ],
        ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu02", *worker],
        ["srun", "--nodes=1", "--ntasks=1", "-w", "gpu03", *worker],
        status,
        status,
        status,
    ]
    assert clock.sleeps == [5, 5]  # polled until all 3 nodes were in `ray status`
    assert all(env["VERL_USE_EXTERNAL_MODULES"] == "eqpo.backends.verl" for env in runner.envs)  # Ray processes load us
    assert [p.signals for p in runner.procs] == [[], [], []]

    # Only this job's processes are stopped (no `ray stop`, which ends every Ray process of the node).
    stop_ray_cluster(cluster)
    assert [p.signals for p in runner.procs] == [[signal.SIGTERM]] * 3
    assert not any(c[1:2] == ["stop"] for c in runner.commands)


def test_ports_are_free_and_differ_between_jobs():
    from eqpo.backends.verl.ray_cluster import free_port

    first = free_port()
    assert first != 6379 and 0 < first < 65536
    with socket.socket() as sock:
        sock.bind(("", first))  # it was free
    clusters = [start(FakeRunner(["gpu01", "gpu02", "gpu03"], joined=[3]), ports=free_port) for _ in range(2)]
    assert clusters[0].address != clusters[1].address and not clusters[0].address.endswith(":6379")


def test_a_head_that_exits_fails_at_once():
    runner = FakeRunner(["gpu01", "gpu02", "gpu03"], joined=[1])
    real_popen = runner.Popen

    def popen(argv, env=None, **kw):
        proc = real_popen(argv, env, **kw)
        if "--head" in argv:
            proc.returncode = 1
        return proc

    runner.Popen = popen
    with pytest.raises(RayClusterError, match="Ray head on gpu01 exited with status 1"):
        start(runner)


def test_workers_that_never_join_time_out_with_a_clear_error_and_are_stopped():
    runner, clock = FakeRunner(["gpu01", "gpu02", "gpu03"], joined=[1]), FakeClock()
    with pytest.raises(RayClusterError, match=r"only 1 of 3 Ray nodes joined 10\.0\.0\.1:41000 within 60 s") as err:
        start(runner, clock)
    assert "Active:" in str(err.value)  # the last `ray status` is in the message
    assert clock.now >= 60 and len(clock.sleeps) == 12
    assert [p.signals for p in runner.procs] == [[signal.SIGTERM]] * 3  # head and both workers


def test_a_worker_step_that_exits_fails_at_once():
    runner = FakeRunner(["gpu01", "gpu02", "gpu03"], joined=[1], worker_exit=1)
    with pytest.raises(RayClusterError, match="worker step on gpu02 exited with status 1"):
        start(runner)
    assert runner.procs[0].signals == [signal.SIGTERM]  # the head was stopped
    assert not any(c[1:2] == ["status"] for c in runner.commands)


def test_allocation_errors_are_named():
    with pytest.raises(RayClusterError, match="SLURM_JOB_NODELIST is not set"):
        start_ray_cluster(2, 4, {"PATH": "/bin"}, FakeRunner([], [2]), ray="ray")
    with pytest.raises(RayClusterError, match=r"train.nnodes = 3 but the SLURM allocation has 2 node"):
        start(FakeRunner(["gpu01", "gpu02"], [2]))
    with pytest.raises(RayClusterError, match="this host .* is not in the allocation"):
        start_ray_cluster(2, 4, ENV, FakeRunner(["gpu02", "gpu03"], [2]), ray="ray", this_host="login1")
    with pytest.raises(ValueError, match="nnodes >= 2"):
        start_ray_cluster(1, 4, ENV, FakeRunner(["gpu01"], [1]))


def test_the_head_is_this_host_and_nodes_are_counted_from_ray_status():
    assert head_first(["gpu01", "gpu02", "gpu03"], "gpu02.cluster.local") == ["gpu02", "gpu01", "gpu03"]
    assert count_nodes(ray_status(2, idle=1)) == 3
    assert count_nodes(ray_status(0)) == 0
    assert count_nodes(ray_status(3).replace(" 1 node_", " 2 node_", 1)) == 4


# ----------------------------------------------------------------------------------------------
# The launch
# ----------------------------------------------------------------------------------------------


def nodes_config(nnodes):
    config = copy.deepcopy(PAPER)
    config["train"]["nnodes"] = nnodes
    return config


def test_the_address_is_added_only_for_multi_node_runs_and_composes_with_verls_config(tmp_path):
    paths = RunPaths.for_run(tmp_path)
    single = build_overrides(
        RunSettings.from_config(nodes_config(1), "medgemma-4b", "eqpo"), 0, paths, tmp_path, num_cpus=32
    )
    assert [o for o in single if "ray_kwargs" in o] == [
        "+ray_kwargs.ray_init.address=local",
        "+ray_kwargs.ray_init.include_dashboard=false",
        "ray_kwargs.ray_init.num_cpus=32",
    ]
    with pytest.raises(ValueError, match="only for multi-node runs"):
        build_overrides(
            RunSettings.from_config(nodes_config(1), "medgemma-4b", "eqpo"),
            0,
            paths,
            tmp_path,
            ray_address="10.0.0.1:6379",
        )
    with pytest.raises(ValueError, match="train.nnodes must be an integer >= 1"):
        build_overrides(RunSettings.from_config(nodes_config(0), "medgemma-4b", "eqpo"), 0, paths, tmp_path)

    multi = build_overrides(
        RunSettings.from_config(nodes_config(2), "medgemma-4b", "eqpo"), 0, paths, tmp_path, ray_address="10.0.0.1:6379"
    )
    assert "+ray_kwargs.ray_init.address='10.0.0.1:6379'" in multi
    cfg = test_launch.compose_overrides(multi)
    assert cfg.ray_kwargs.ray_init.address == "10.0.0.1:6379" and cfg.trainer.nnodes == 2
    assert "include_dashboard" not in cfg.ray_kwargs.ray_init
    assert cfg.ray_kwargs.ray_init.num_cpus is None  # ray.init(address=...) refuses num_cpus
    assert not any("ray_kwargs" in o for o in launch.resume_key(multi))  # the address changes every allocation


def test_run_training_joins_the_cluster_and_stops_it_even_when_verl_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_JOB_NODELIST", "node[1-2]")
    data = test_launch.export(tmp_path / "data")
    host = socket.gethostname()
    settings = RunSettings.from_config(nodes_config(2), "qwen2.5-vl-7b", "eqpo")
    runner = FakeRunner([host, "gpu09"], joined=[2])
    verl = test_launch.FakeVerl(fail_after=1)

    def train(ray_runner, **kwargs):
        launch.run_training(
            settings, 0, tmp_path / "run", data, runner=verl, check_env=False, ray_runner=ray_runner, **kwargs
        )

    with pytest.raises(RuntimeError, match="verl exited with status 1"):
        train(runner, num_cpus=16)
    head = runner.commands[1]
    port = next(a.split("=")[1] for a in head if a.startswith("--port="))
    address = f"{socket.gethostbyname(host)}:{port}"
    assert f"+ray_kwargs.ray_init.address='{address}'" in verl.calls[0]
    assert not any("num_cpus" in a for a in verl.calls[0])  # given to `ray start` on each node instead
    assert "--num-cpus=16" in head and "--num-cpus=16" in runner.commands[2]
    assert runner.commands[0] == ["scontrol", "show", "hostnames", "node[1-2]"]
    assert [p.signals for p in runner.procs] == [[signal.SIGTERM]] * 2  # the head and the worker step
    assert runner.envs[0]["VERL_USE_EXTERNAL_MODULES"].endswith("eqpo.backends.verl")

    # The next allocation (another address) resumes from the checkpoint of the first.
    runner = FakeRunner(["gpu07", host], joined=[2])
    train(runner)
    assert len(verl.calls) == 2 and (tmp_path / "run" / "checkpoint" / "global_step_2").is_dir()
    assert [p.signals for p in runner.procs] == [[signal.SIGTERM]] * 2


def test_a_single_node_run_starts_no_cluster(tmp_path):
    data = test_launch.export(tmp_path / "data")
    runner, verl = FakeRunner([], [1]), test_launch.FakeVerl()
    launch.run_training(
        RunSettings.from_config(nodes_config(1), "qwen2.5-vl-7b", "eqpo"),
        0,
        tmp_path / "run",
        data,
        runner=verl,
        check_env=False,
        ray_runner=runner,
    )
    assert runner.commands == [] and "+ray_kwargs.ray_init.address=local" in verl.calls[0]


# ----------------------------------------------------------------------------------------------
# SLURM resources of train_verl
# ----------------------------------------------------------------------------------------------


def test_a_two_node_config_asks_slurm_for_two_nodes_with_the_gpus_on_each(tmp_path):
    overlay = tmp_path / "nodes.yaml"
    overlay.write_text("train:\n  nnodes: 2\n")
    planned = test_slurm_profile.jobs(test_slurm_profile.dry_run("--configfile", str(overlay)), "train_verl")
    assert len(planned) == len(PAPER["base_models"]) * len(PAPER["methods"]) * len(PAPER["seeds"])
    for job in planned:
        res = job["resources"]
        assert res["nodes"] == "2" and res["gres"] == "gpu:4" and "gpu" not in res
        assert res["slurm_partition"] == "gpu"

    # What the SLURM plugin 2.8.0 submits for those resources (its own sbatch builders).
    from snakemake_executor_plugin_slurm.submit_string import get_submit_command
    from snakemake_executor_plugin_slurm.utils import set_gres_string

    class Resources(dict):
        __getattr__ = dict.__getitem__

    job = SimpleNamespace(resources=Resources(nodes=2, gres="gpu:4", mem_mb=256000, runtime=2880), threads=32)
    params = dict(run_uuid="u", slurm_logfile="log", comment_str="c", account="-A a", partition="-p gpu", workdir="/w")
    call = get_submit_command(job, params) + set_gres_string(job)
    assert "--nodes=2" in call and call.endswith("--gres=gpu:4") and "--gpus" not in call
