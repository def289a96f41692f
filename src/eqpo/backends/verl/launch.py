"""Render and run one verl 0.9.1 training run (``python -m verl.trainer.main_ppo``) from a run's settings.

The workflow's ``train_verl`` rule calls :func:`run_training` with the run's
:class:`~eqpo.runs.settings.RunSettings` (resolved once from the config by the workflow). It builds the
Hydra overrides from them (the model's ``path``/``overrides``, the ``train`` settings = paper Table 3,
the method's estimator options, the reward), runs verl as a subprocess whose output is streamed into the rule
log, and converts verl's outputs into the run-file contract of :mod:`eqpo.runs.files` with
:mod:`eqpo.backends.verl.logs`.

Layout of a run directory (all paths handed to verl are absolute)::

    <run>/verl/                 work directory, kept across retries (not a Snakemake output)
        checkpoints/            trainer.default_local_dir (verl resumes from here: resume_mode=auto)
        validation/{step}.jsonl trainer.validation_data_dir (greedy validation dumps)
        rollouts/{step}.jsonl   trainer.rollout_data_dir (training rollouts)
        metrics*.jsonl          verl's file logger (VERL_FILE_LOGGER_PATH; one file per attempt)
        clusters.jsonl          cluster log of our trainer (+trainer.eqpo_cluster_log)
        hydra/                  Hydra's run directory
        overrides.json          the overrides of the run the checkpoints belong to
    <run>/checkpoint/           the finished run's checkpoints (moved here on success)
    <run>/dynamics.jsonl, steps.jsonl, clusters.parquet

The extension's own settings (estimator name, trainer mode ``eqpo_sync``, reward function, estimator
options, cluster log) come from :func:`eqpo.backends.verl.estimators.verl_overrides`. A missing GPU/vLLM
environment gives :class:`TrainingEnvironmentError` before anything starts. ``train.device: cpu``
runs verl's own loop on a machine without GPU instead (:mod:`eqpo.backends.verl.cpu`: its Hydra overrides
and environment are added, the GPU preflight is skipped).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from eqpo.backends.verl.estimators import (
    DATA_DIR_ENV,
    EXTERNAL_MODULE,
    METHOD_TO_VERL,
    REWARD_NAME,
    REWARD_PATH,
    format_value,
    verl_overrides,
)
from eqpo.backends.verl.memory_plan import max_token_len_per_gpu
from eqpo.data.export import train_part

# The extension's names (estimators, trainer mode, reward) come from eqpo.backends.verl.estimators, the
# module verl imports in every process; launch.py keeps no copy of them.
from eqpo.runs import base_models
from eqpo.runs.files import CLUSTER_LOG_FILE, CLUSTERS_FILE, DYNAMICS_FILE, STEPS_FILE
from eqpo.runs.settings import RunSettings, TrainSettings, flatten_overrides

ENTRYPOINT = "verl.trainer.main_ppo"
# Where verl's driver finds its Ray cluster: main_ppo passes ray_kwargs.ray_init to ray.init; `address`
# is not in verl's schema, hence the `+`. A single-node run starts its own Ray ("local": never joins
# another job's cluster on a shared node; ports are chosen free), a multi-node run joins the cluster
# started over its SLURM nodes.
RAY_ADDRESS_KEY = "+ray_kwargs.ray_init.address"
RAY_LOCAL = "local"
# Experiment trackers verl's Tracking can add to its console and file loggers (train.loggers).
TRACKERS = ("wandb", "tensorboard", "mlflow")
# verl 0.9.1's TransferQueue storage (ppo_trainer.yaml: transfer_queue.backend.SimpleStorage).
TQ_STORAGE_UNITS_KEY = "transfer_queue.backend.SimpleStorage.num_data_storage_units"
TQ_DEFAULT_STORAGE_UNITS = 8
# Set by train.restart_estimator_on_resume: read by eqpo.backends.verl.trainer on resume.
RESTART_ESTIMATOR_KEY = "+trainer.eqpo_restart_estimator"

# TrainSettings field -> verl key (values copied as they are).
TRAIN_KEYS: dict[str, tuple[str, ...]] = {
    "batch_prompts": ("data.train_batch_size",),
    "rollouts": ("actor_rollout_ref.rollout.n",),
    "lr": ("actor_rollout_ref.actor.optim.lr",),
    "ppo_mini_batch": ("actor_rollout_ref.actor.ppo_mini_batch_size",),
    "ppo_epochs": ("actor_rollout_ref.actor.ppo_epochs",),
    # The vanilla PPO loss reads clip_ratio_low/high first (both default 0.2), so set all three.
    "clip": (
        "actor_rollout_ref.actor.clip_ratio",
        "actor_rollout_ref.actor.clip_ratio_low",
        "actor_rollout_ref.actor.clip_ratio_high",
    ),
    "grad_clip": ("actor_rollout_ref.actor.grad_clip",),
    "epochs": ("trainer.total_epochs",),
    "test_freq": ("trainer.test_freq",),
    "save_freq": ("trainer.save_freq",),
    "temperature": ("actor_rollout_ref.rollout.temperature",),
    "max_prompt_length": ("data.max_prompt_length",),
    "max_response_length": ("data.max_response_length",),
    "rollout_gpu_memory": ("actor_rollout_ref.rollout.gpu_memory_utilization",),
    "tensor_parallel": ("actor_rollout_ref.rollout.tensor_model_parallel_size",),
    "gpus": ("trainer.n_gpus_per_node",),
}

# Greedy validation (paper: "greedy validation"), one answer per prompt.
GREEDY_VALIDATION = {
    "actor_rollout_ref.rollout.val_kwargs.n": 1,
    "actor_rollout_ref.rollout.val_kwargs.do_sample": False,
    "actor_rollout_ref.rollout.val_kwargs.temperature": 0,
    "actor_rollout_ref.rollout.val_kwargs.top_p": 1.0,
    "actor_rollout_ref.rollout.val_kwargs.top_k": -1,
}


class TrainingEnvironmentError(RuntimeError):
    """This machine cannot run verl training (no verl/vLLM installed, no or too few GPUs)."""


# ----------------------------------------------------------------------------------------------
# Paths
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunPaths:
    """Absolute paths of one run: verl's work files and our run-file contract."""

    run_dir: Path
    work_dir: Path
    checkpoints: Path
    validation_dir: Path
    rollout_dir: Path
    file_log: Path
    cluster_log: Path
    hydra_dir: Path
    overrides_record: Path
    checkpoint: Path
    dynamics: Path
    steps: Path
    clusters: Path

    @classmethod
    def for_run(cls, run_dir: str | Path) -> RunPaths:
        """The layout under ``run_dir`` (made absolute; nothing is created)."""
        run = Path(run_dir).expanduser().resolve()
        work = run / "verl"
        return cls(
            run_dir=run,
            work_dir=work,
            checkpoints=work / "checkpoints",
            validation_dir=work / "validation",
            rollout_dir=work / "rollouts",
            file_log=work / "metrics.jsonl",
            cluster_log=work / CLUSTER_LOG_FILE,
            hydra_dir=work / "hydra",
            overrides_record=work / "overrides.json",
            checkpoint=run / "checkpoint",
            dynamics=run / DYNAMICS_FILE,
            steps=run / STEPS_FILE,
            clusters=run / CLUSTERS_FILE,
        )

    def file_logs(self) -> list[Path]:
        """verl's file-logger outputs of every attempt, oldest first (``metrics.1.jsonl`` ... then
        ``metrics.jsonl``, the latest)."""
        older = sorted(self.work_dir.glob("metrics.*.jsonl"), key=lambda p: int(p.name.split(".")[1]))
        return [*older, *([self.file_log] if self.file_log.exists() else [])]


# ----------------------------------------------------------------------------------------------
# Overrides
# ----------------------------------------------------------------------------------------------


def _bare_key(key: str) -> str:
    return key.lstrip("+~")


class _Overrides:
    """An ordered set of ``key=value`` overrides; setting a key again replaces its value in place."""

    def __init__(self) -> None:
        self._items: dict[str, tuple[str, Any]] = {}

    def set(self, key: str, value: Any) -> None:
        self._items[_bare_key(key)] = (key, value)

    def set_rendered(self, override: str) -> None:
        """Add an override already written as ``key=value`` (its value kept verbatim)."""
        key, sep, value = override.partition("=")
        if not sep or not key:
            raise ValueError(f"not a Hydra override (key=value): {override!r}")
        self._items[_bare_key(key)] = (key, _Rendered(value))

    def update(self, values: Mapping[str, Any]) -> None:
        for key, value in values.items():
            self.set(key, value)

    def get(self, key: str, default: Any = None) -> Any:
        item = self._items.get(_bare_key(key))
        return default if item is None else item[1]

    def render(self) -> list[str]:
        return [
            f"{key}={value if isinstance(value, _Rendered) else format_value(value)}"
            for key, value in self._items.values()
        ]


class _Rendered(str):
    """An override value already in Hydra syntax."""


def method_to_verl(method: str) -> str:
    """verl's ``algorithm.adv_estimator`` for one of our methods."""
    try:
        return METHOD_TO_VERL[method]
    except KeyError:
        raise ValueError(f"unknown method {method!r}; known: {sorted(METHOD_TO_VERL)}") from None


def train_file(data_dir: str | Path, method: str) -> Path:
    """The export a method trains on: ``train_rs.parquet`` for GRPO+RS, else ``train.parquet``."""
    return Path(data_dir).expanduser().resolve() / f"{train_part(method)}.parquet"


def val_file(data_dir: str | Path) -> Path:
    return Path(data_dir).expanduser().resolve() / "val.parquet"


def model_entry(settings: RunSettings) -> Mapping[str, Any]:
    """The run's ``models.<m>`` entry (``settings.model_config``), checked to be a verl model with a path."""
    model, entry = settings.model, settings.model_config
    if entry.get("backend") != "verl":
        raise ValueError(f"models.{model}.backend is {entry.get('backend')!r}; GPU training needs backend: verl")
    if not entry.get("path"):
        raise ValueError(f"models.{model}.path is missing: give a hub id or a local directory of the weights")
    return entry


def resolve_model_path(path: str, model: str) -> str:
    """A hub id (``org/name``) as given; a local directory made absolute. A local path that does not
    exist (or holds no ``config.json``) is an error naming the config key."""
    try:
        weights = base_models.resolve_weights(path)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"models.{model}.path = {path!r}: {err}") from None
    return str(weights.directory) if weights.where == "local" else path


def _experiment_names(settings: RunSettings, seed: int) -> tuple[str, str]:
    return f"eqpo_{settings.experiment}", f"{settings.model}_{settings.method}_seed{seed}"


def build_overrides(
    settings: RunSettings,
    seed: int,
    paths: RunPaths,
    data_dir: str | Path,
    ray_address: str | None = None,
    num_cpus: int | None = None,
) -> list[str]:
    """Hydra overrides for ``python -m verl.trainer.main_ppo`` of one (model, method, seed) run.

    ``settings``: the run's settings (``train``, estimator options, reward, model entry, experiment,
    validation subset). ``data_dir`` holds the verl export (train/val/train_rs.parquet). Per-model
    ``models.<m>.overrides`` come last and replace any default of the same key. ``ray_address``
    (``host:port`` of the Ray cluster over the SLURM nodes, multi-node runs only) becomes
    ``+ray_kwargs.ray_init.address``; a single-node run starts its own local Ray instead, with
    ``num_cpus`` CPUs (the job's threads; verl asks for a fixed number under SLURM; on a multi-node
    run each node's ``ray start`` gets them). Too few CPUs for verl's TransferQueue is an error. The
    attention implementation and its companions come from :mod:`eqpo.runs.base_models`.
    """
    model, method, train = settings.model, settings.method, settings.train
    entry = model_entry(settings)
    kind = base_models.model_type(entry, model, _weights_if_resolvable(entry))
    attention = base_models.attention(entry, model, kind)
    estimator = method_to_verl(method)
    nnodes = train.nnodes
    if ray_address is not None and nnodes == 1:
        raise ValueError(f"a Ray address ({ray_address!r}) is only for multi-node runs, but train.nnodes = 1")
    project, experiment = _experiment_names(settings, seed)
    out = _Overrides()

    out.update(
        {
            "algorithm.adv_estimator": estimator,  # (set again, in place, by verl_overrides below)
            "algorithm.use_kl_in_reward": False,
            "data.train_files": train_file(data_dir, method),
            "data.val_files": val_file(data_dir),
            "data.image_key": "images",
            "data.prompt_key": "prompt",
            "data.filter_overlong_prompts": True,
            "data.truncation": "error",
            "data.shuffle": True,
            "data.seed": seed,
            "actor_rollout_ref.model.path": entry["path"],
            "actor_rollout_ref.actor.data_loader_seed": seed,
            "actor_rollout_ref.actor.fsdp_config.seed": seed,
            "actor_rollout_ref.actor.entropy_coeff": 0,
            # Evaluation merges the FSDP shards itself (verl's model merger); a full HF copy in every save
            # (+2 bytes per parameter) only on request.
            "actor_rollout_ref.actor.checkpoint.save_contents": [
                "model",
                "optimizer",
                "extra",
                *(["hf_model"] if train.save_hf_model else []),
            ],
            "actor_rollout_ref.rollout.name": "vllm",
            "actor_rollout_ref.rollout.seed": seed,
            **GREEDY_VALIDATION,
        }
    )
    for key, targets in TRAIN_KEYS.items():
        for target in targets:
            out.set(target, getattr(train, key))
    if train.steps is not None:
        out.set("trainer.total_training_steps", train.steps)
    out.update(_kl_overrides(train.kl_coef))
    out.update(_batching_overrides(train))
    out.update(
        {
            "trainer.nnodes": nnodes,
            "trainer.project_name": project,
            "trainer.experiment_name": experiment,
            "trainer.logger": ["console", "file", *trackers(train)],
            "trainer.val_before_train": True,
            "trainer.resume_mode": "auto",
            "trainer.default_local_dir": paths.checkpoints,
            # verl deletes the oldest checkpoint after writing a new one (null would keep every save).
            "trainer.max_actor_ckpt_to_keep": train.max_ckpt_to_keep,
            "trainer.max_critic_ckpt_to_keep": train.max_ckpt_to_keep,
            "trainer.validation_data_dir": paths.validation_dir,
        }
    )
    out.update(base_models.attention_overrides(attention, kind))
    if settings.max_samples is not None:  # a seeded random subset of the validation split (verl's RLHFDataset)
        out.set("data.val_max_samples", int(settings.max_samples))
    if train.rollout_data:  # every rollout of every step (~80 MB a step at paper scale); opt-in
        out.set("trainer.rollout_data_dir", paths.rollout_dir)
    if train.restart_estimator_on_resume:
        out.set(RESTART_ESTIMATOR_KEY, True)
    # adv_estimator, trainer mode, external_lib, reward function (the run's own: settings.options.reward),
    # +algorithm.eqpo.<option> (estimators.<method> with the run's `estimator`), cluster log
    reward = settings.options.reward_kwargs()
    for override in verl_overrides(method, settings.estimator, cluster_log=str(paths.cluster_log), reward=reward):
        out.set_rendered(override)
    if ray_address is not None:
        out.set(RAY_ADDRESS_KEY, ray_address)
    else:
        out.update(_local_ray_overrides(num_cpus))
    if train.device == "cpu":
        num_cpus = _cpu_run_overrides(out, train, num_cpus)
    model_overrides = flatten_overrides(entry.get("overrides"))
    out.update(model_overrides)
    if num_cpus is not None:
        units = out.get(TQ_STORAGE_UNITS_KEY, TQ_DEFAULT_STORAGE_UNITS)
        _check_ray_cpus(num_cpus * nnodes, {TQ_STORAGE_UNITS_KEY: units})
    return out.render()


def _check_ray_cpus(total: int, model_overrides: Mapping[str, Any]) -> None:
    """TransferQueue's controller and storage units each hold a Ray CPU, as does verl's TaskRunner;
    with fewer CPUs than that ``tq.init`` waits forever without an error, so refuse up front."""
    units = model_overrides.get(
        TQ_STORAGE_UNITS_KEY, model_overrides.get("+" + TQ_STORAGE_UNITS_KEY, TQ_DEFAULT_STORAGE_UNITS)
    )
    needed = int(units) + 2
    if total < needed:
        raise ValueError(
            f"Ray gets {total} CPU(s) but verl's TransferQueue ({units} storage units and a controller) and its "
            f"TaskRunner alone need {needed}, and TransferQueue would wait forever: give the train_verl job more "
            f"threads (gpu_jobs.train_verl.threads in the config) or lower {TQ_STORAGE_UNITS_KEY} in "
            "models.<m>.overrides"
        )


def _cpu_run_overrides(out: _Overrides, train: TrainSettings, num_cpus: int | None) -> int | None:
    """A ``train.device: cpu`` run: the CPU platform's settings (:data:`eqpo.backends.verl.cpu.CPU_OVERRIDES`),
    Ray's logical GPUs (one per FSDP rank, ``train.gpus``) and, for a single-node run, at least
    :data:`~eqpo.backends.verl.cpu.RAY_CPUS` logical Ray CPUs (verl's processes share the machine's cores,
    but TransferQueue waits forever without enough Ray CPUs). Returns the Ray CPU count."""
    from eqpo.backends.verl.cpu import CPU_OVERRIDES, RAY_CPUS, RAY_GPUS_KEY

    out.update(CPU_OVERRIDES)
    out.set(RAY_GPUS_KEY, train.gpus)
    if out.get(RAY_ADDRESS_KEY) == RAY_LOCAL:
        num_cpus = max(int(num_cpus or 0), RAY_CPUS)
        out.set("ray_kwargs.ray_init.num_cpus", num_cpus)
    return num_cpus


def _local_ray_overrides(num_cpus: int | None) -> dict[str, Any]:
    """A Ray instance of this job alone: ``address: local`` starts a new one even when another job on
    the node runs Ray (``ray.init()`` would join the last cluster started there), on free ports; no
    dashboard (its fixed port 8265 is shared by every job of a node)."""
    out: dict[str, Any] = {RAY_ADDRESS_KEY: RAY_LOCAL, "+ray_kwargs.ray_init.include_dashboard": False}
    if num_cpus is not None:
        if isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1:
            raise ValueError(f"Ray's num_cpus must be a positive integer (the job's threads), got {num_cpus!r}")
        out["ray_kwargs.ray_init.num_cpus"] = num_cpus
    return out


def trackers(train: TrainSettings) -> list[str]:
    """``train.loggers``: experiment trackers added to verl's console and file loggers."""
    unknown = [name for name in train.loggers if name not in TRACKERS]
    if unknown:
        raise ValueError(f"train.loggers {unknown} are not trackers verl supports here; choose from {list(TRACKERS)}")
    return list(train.loggers)  # TrainSettings keeps each name once


def _weights_if_resolvable(entry: Mapping[str, Any]) -> base_models.Weights | None:
    """The model's weights when they are on this machine (to read its config.json), else None."""
    try:
        return base_models.resolve_weights(str(entry["path"]))
    except FileNotFoundError:
        return None


def _kl_overrides(kl_coef: float) -> dict[str, Any]:
    """KL as a loss term (low-variance estimator) when kl_coef > 0; paper: KL disabled."""
    if kl_coef <= 0:
        return {"actor_rollout_ref.actor.use_kl_loss": False}
    return {
        "actor_rollout_ref.actor.use_kl_loss": True,
        "actor_rollout_ref.actor.kl_loss_coef": kl_coef,
        "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    }


def _batching_overrides(train: TrainSettings) -> dict[str, Any]:
    """Token-budget micro-batching (no per-GPU micro-batch sizes to tune). The log-prob passes of
    rollout and reference inherit both settings from the actor."""
    return {
        "actor_rollout_ref.actor.use_dynamic_bsz": True,
        "actor_rollout_ref.actor.ppo_max_token_len_per_gpu": max_token_len_per_gpu(train),
    }


# ----------------------------------------------------------------------------------------------
# Command and environment
# ----------------------------------------------------------------------------------------------


def source_root() -> Path:
    """The ``src`` directory this package is imported from (put on the PYTHONPATH of verl's processes)."""
    return Path(__file__).resolve().parents[3]


def build_environment(paths: RunPaths, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The subprocess environment: our extension loaded in every verl process (including the Ray
    TaskRunner and workers), the file logger path, and this checkout's ``src`` importable."""
    env = dict(os.environ if base is None else base)
    modules = [m for m in env.get("VERL_USE_EXTERNAL_MODULES", "").split(",") if m]
    env["VERL_USE_EXTERNAL_MODULES"] = ",".join(dict.fromkeys([*modules, EXTERNAL_MODULE]))
    env["VERL_FILE_LOGGER_PATH"] = str(paths.file_log)
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in (str(source_root()), env.get("PYTHONPATH", "")) if p))
    env["HYDRA_FULL_ERROR"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    # Experiment trackers (train.loggers) write next to the run unless the user points them elsewhere:
    # verl's defaults are ./tensorboard_log and sqlite:////tmp/mlruns.db (node-local on a cluster).
    env.setdefault("TENSORBOARD_DIR", str(paths.work_dir / "tensorboard"))
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{paths.work_dir / 'mlruns.db'}")
    env.setdefault("WANDB_DIR", str(paths.work_dir))
    # Compute nodes often cannot reach the internet, where wandb.init fails or hangs: wandb logs
    # offline unless the user sets WANDB_MODE (sync later: `wandb sync <run>/verl/wandb/offline-run-*`).
    env.setdefault("WANDB_MODE", "offline")
    return env


def build_command(
    settings: RunSettings,
    seed: int,
    paths: RunPaths,
    data_dir: str | Path,
    python: str | None = None,
    base_env: Mapping[str, str] | None = None,
    ray_address: str | None = None,
    num_cpus: int | None = None,
) -> tuple[list[str], dict[str, str]]:
    """``(argv, env)`` of the verl run: ``python -m verl.trainer.main_ppo <overrides>``, with
    Hydra's own run directory inside the work directory."""
    overrides = build_overrides(settings, seed, paths, data_dir, ray_address, num_cpus)
    argv = [python or sys.executable, "-m", ENTRYPOINT, *overrides, f"hydra.run.dir={format_value(paths.hydra_dir)}"]
    env = build_environment(paths, base_env)
    env[DATA_DIR_ENV] = str(Path(data_dir).expanduser().resolve())
    if settings.train.device == "cpu":
        from eqpo.backends.verl.cpu import cpu_environment

        env = cpu_environment(env)
    return argv, env


def check_environment(settings: RunSettings, data_dir: str | Path, run_dir: str | Path, probe: Any = None) -> None:
    """The preflight (:mod:`eqpo.backends.verl.preflight`) of one run on this node, printed into the log; raise
    :class:`TrainingEnvironmentError` with one line per problem before Ray or verl start."""
    from eqpo.backends.verl import preflight

    model, method = settings.model, settings.method
    checks = preflight.run_checks([settings], data_dir, run_dir, probe, evaluation=False)
    _say("preflight\n" + preflight.report(checks))
    found = preflight.problems(checks)
    if found:
        raise TrainingEnvironmentError(
            f"this node cannot train {model}/{method} ({len(found)} problem(s); Python: {sys.executable}):\n"
            + "\n".join(found)
            + "\nFor the CPU demo instead: snakemake --cores 2 --configfile config/demo.yaml"
        )


def check_reward_ids(val_parquet: str | Path, compute_score: Callable[..., Any] | None = None) -> None:
    """Call the reward function on the first validation row and check that it returns that row's
    ``sample_id``: verl's validation dumps hold the answer text, the reward's result keys and a
    random uid, so logs.py needs the sample id to attach each answer to its demographics."""
    import pandas as pd

    if compute_score is None:
        from eqpo.backends.verl.reward import compute_score
    row = pd.read_parquet(val_parquet).iloc[0]
    info = dict(row["extra_info"])
    result = compute_score(
        data_source=row["data_source"],
        solution_str="",
        extra_info=info,
        ground_truth=row["reward_model"]["ground_truth"],
    )
    got = result.get("sample_id") if isinstance(result, Mapping) else None
    if got != str(info.get("sample_id")):
        keys = sorted(result) if isinstance(result, Mapping) else type(result).__name__
        raise RuntimeError(
            f"the reward function ({REWARD_PATH}:{REWARD_NAME}) returned sample_id={got!r} (keys {keys}) for a "
            f"sample with sample_id {info.get('sample_id')!r}: it must return str(extra_info['sample_id']), or "
            "verl's validation dumps cannot be matched to the samples' demographics (dynamics.jsonl)."
        )


# ----------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------

Runner = Callable[[Sequence[str], Mapping[str, str]], int]


def stream_subprocess(
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str | Path | None = None,
    on_line: Callable[[str], None] | None = None,
) -> int:
    """Run ``argv``, copying its stdout and stderr line by line to ``sys.stdout`` (the rule log) and
    handing each line to ``on_line``; returns the exit status."""
    with subprocess.Popen(
        list(argv),
        env=dict(env),
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        bufsize=1,
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.write(line)
            sys.stdout.flush()
            if on_line is not None:
                on_line(line)
        return proc.wait()


class FilteredRows:
    """Watches verl's output for its long-prompt filter (``data.filter_overlong_prompts``) and says
    how many rows of each dataset it dropped. verl's ``RLHFDataset`` prints ``dataset len: N``
    (then ``selected K random samples out of N`` for a validation subset) and, after the filter,
    ``filter dataset len: M``; it counts a row whose processing fails (a broken image, a processor
    error) as too long, so those rows vanish from training without an error. The training dataset
    is built first, then the validation one."""

    NAMES = ("training", "validation")
    _TOTAL = re.compile(r"(?<!filter )dataset len: (\d+)")
    _SELECTED = re.compile(r"selected (\d+) random samples out of \d+")
    _KEPT = re.compile(r"filter dataset len: (\d+)")

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.say = say or _say
        self.dropped: list[tuple[str, int, int]] = []  # (dataset, dropped, of rows)
        self._rows: int | None = None

    def __call__(self, line: str) -> None:
        for pattern in (self._TOTAL, self._SELECTED):
            match = pattern.search(line)
            if match:
                self._rows = int(match[1])
                return
        match = self._KEPT.search(line)
        if match and self._rows is not None:
            name = self.NAMES[len(self.dropped)] if len(self.dropped) < len(self.NAMES) else "another"
            rows, dropped = self._rows, self._rows - int(match[1])
            self.dropped.append((name, dropped, rows))
            self._rows = None
            if dropped:
                self.say(
                    f"WARNING: verl's long-prompt filter dropped {dropped} of {rows} rows of "
                    f"the {name} dataset: prompts longer than data.max_prompt_length, or rows whose images or "
                    "processor failed (their tracebacks are above: 'Error processing one of the samples')"
                )
            else:
                self.say(f"verl's long-prompt filter kept all {match[1]} rows of the {name} dataset")


def _has_checkpoint(paths: RunPaths) -> bool:
    return (paths.checkpoints / "latest_checkpointed_iteration.txt").exists()


def prepare_work_dir(paths: RunPaths, overrides: Sequence[str]) -> bool:
    """Make the work directory ready; returns True when verl will resume from a checkpoint.

    verl resumes when the work directory holds a checkpoint whose recorded overrides agree with
    ``overrides`` on every setting of the training trajectory (:func:`resume_key`). Otherwise this is
    a new run, and an existing work directory is moved aside to ``verl.<n>`` next to it (never
    deleted), so that no log of an earlier run mixes into this one and no checkpoint is lost; the log
    says so and names the settings that changed. The file log of an interrupted attempt is kept as
    ``metrics.<n>.jsonl``, because verl's file logger truncates its file when it starts.
    """
    recorded = json.loads(paths.overrides_record.read_text()) if paths.overrides_record.exists() else None
    has_checkpoint = _has_checkpoint(paths)
    resume = has_checkpoint and recorded is not None and resume_key(recorded) == resume_key(overrides)
    if not resume and paths.work_dir.exists() and any(paths.work_dir.iterdir()):
        aside = _move_aside(paths.work_dir)
        if has_checkpoint:
            changed = changed_settings(recorded or [], overrides)
            _say(
                f"NEW RUN: the settings of the training trajectory differ from the checkpoint's "
                f"({'; '.join(changed) or 'no record of its settings'}), so its work directory, checkpoint "
                f"included, was moved to {aside} (nothing was deleted: remove it yourself when it is no longer "
                "needed, or move it back to resume it)"
            )
        else:
            _say(f"new run: the earlier work directory (no checkpoint) was moved to {aside}")
    paths.work_dir.mkdir(parents=True, exist_ok=True)
    if resume and paths.file_log.exists():
        numbers = [int(p.name.split(".")[1]) for p in paths.work_dir.glob("metrics.*.jsonl")]
        paths.file_log.rename(paths.work_dir / f"metrics.{max(numbers, default=0) + 1}.jsonl")
    paths.overrides_record.write_text(json.dumps(list(overrides), indent=1))
    return resume


def _move_aside(work_dir: Path) -> Path:
    """Rename ``work_dir`` to the first free ``<work_dir>.<n>`` (n = 1, 2, ...); returns the new path."""
    n = 1
    while work_dir.with_name(f"{work_dir.name}.{n}").exists():
        n += 1
    aside = work_dir.with_name(f"{work_dir.name}.{n}")
    work_dir.rename(aside)
    return aside


def changed_settings(recorded: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """The trajectory settings (:func:`resume_key`) that differ, as ``key: old -> new`` lines (a key
    only on one side shows ``(unset)`` on the other)."""
    old, new = (dict(o.partition("=")[::2] for o in resume_key(side)) for side in (recorded, overrides))
    return [
        f"{key}: {old.get(key, '(unset)')} -> {new.get(key, '(unset)')}"
        for key in dict.fromkeys([*old, *new])
        if old.get(key) != new.get(key)
    ]


def finish_checkpoints(paths: RunPaths, keep: int | None = None) -> None:
    """Move verl's checkpoints to ``<run>/checkpoint`` (the rule's output) once the run is done,
    keeping the newest ``keep`` ``global_step_N`` folders (None: all). verl prunes only the saves of
    its own process, so a resumed run still holds the checkpoint it resumed from."""
    if not paths.checkpoints.exists():
        raise FileNotFoundError(
            f"verl finished but wrote no checkpoint under {paths.checkpoints} "
            "(trainer.save_freq and the last step save one)"
        )
    if keep is not None:
        steps = sorted(
            (p for p in paths.checkpoints.glob("global_step_*") if p.name[12:].isdigit()),
            key=lambda p: int(p.name[12:]),
        )
        for old in steps[:-keep]:
            shutil.rmtree(old)
    if paths.checkpoint.exists():
        shutil.rmtree(paths.checkpoint)
    paths.checkpoints.rename(paths.checkpoint)


# Overrides that do not change the training trajectory, so changing one keeps the checkpoint: where
# Ray runs (its address changes with every SLURM allocation, its CPUs with the job's threads), what
# is logged or kept (trackers, rollout dumps, checkpoints to keep, the validation subset, Hydra's
# directory), and train.restart_estimator_on_resume, which exists to resume a checkpoint.
NOT_TRAJECTORY = (
    "ray_kwargs.",
    "trainer.logger",
    "trainer.max_actor_ckpt_to_keep",
    "trainer.max_critic_ckpt_to_keep",
    "trainer.rollout_data_dir",
    "data.val_max_samples",
    "hydra.run.dir",
    _bare_key(RESTART_ESTIMATOR_KEY),
)


def resume_key(overrides: Sequence[str]) -> list[str]:
    """The overrides that decide whether a checkpoint belongs to this run: all but those of
    :data:`NOT_TRAJECTORY` (a key equal to one of them, or under one ending in ``.``)."""

    def trajectory(override: str) -> bool:
        key = _bare_key(override.partition("=")[0])
        return not any(key == k or (k.endswith(".") and key.startswith(k)) for k in NOT_TRAJECTORY)

    return [o for o in overrides if trajectory(o)]


def _say(message: str) -> None:
    print(f"[eqpo.verl] {message}", flush=True)


def run_training(
    settings: RunSettings,
    seed: int,
    run_dir: str | Path,
    data_dir: str | Path,
    *,
    runner: Runner | None = None,
    check_env: bool = True,
    compute_score: Callable[..., Any] | None = None,
    ray_runner: Any = None,
    num_cpus: int | None = None,
    probe: Any = None,
) -> RunPaths:
    """Train one (model, method, seed) with verl and write the run files.

    ``settings``: the run's settings (:meth:`RunSettings.from_config` of the workflow's config). Checks
    the model path, the data files, that the reward function (``compute_score``, default
    ours) identifies validation answers, and (``check_env``) runs the node's preflight
    (:mod:`eqpo.backends.verl.preflight`: GPUs, driver, verl/vLLM, attention, weights, disk); runs verl
    (``runner(argv, env) -> exit status``; default: a streamed subprocess), then writes
    ``dynamics.jsonl``, ``steps.jsonl`` and ``clusters.parquet`` into ``run_dir`` and moves the
    checkpoints to ``run_dir/checkpoint``. Returns the run's paths.

    With ``train.nnodes > 1`` (inside a SLURM allocation of that many nodes) a Ray cluster over the
    nodes is started first (:mod:`eqpo.backends.verl.ray_cluster`; process calls through ``ray_runner``,
    default :mod:`subprocess`), verl joins it, and it is stopped when verl ends, also on failure.
    """
    from eqpo.backends.verl import logs

    model, method, train = settings.model, settings.method, settings.train
    entry = model_entry(settings)
    method_to_verl(method)
    model_path = resolve_model_path(str(entry["path"]), model)
    settings = replace(settings, model_config={**entry, "path": model_path})
    for path in (train_file(data_dir, method), val_file(data_dir)):
        if not path.exists():
            raise FileNotFoundError(f"verl data file {path} is missing; the export_verl rule writes it")
    logs.register_custom_specs(data_dir)  # your own datasets' labels, for the reward check below
    check_reward_ids(val_file(data_dir), compute_score)
    if train.device == "cpu":  # no GPU node to check; the CPU support is written for one verl
        from eqpo.backends.verl.cpu import check_version

        check_version()
    elif check_env:
        check_environment(settings, data_dir, run_dir, probe)
    paths = RunPaths.for_run(run_dir)
    nnodes = train.nnodes
    cluster = None
    if nnodes > 1:
        from eqpo.backends.verl.ray_cluster import start_ray_cluster

        _say(f"starting a Ray cluster over {nnodes} SLURM nodes")
        cluster = start_ray_cluster(
            nnodes, train.gpus, build_environment(paths), ray_runner or subprocess, num_cpus=num_cpus
        )
        _say(f"Ray cluster up at {cluster.address}: {', '.join(cluster.nodes)}")
    try:
        argv, env = build_command(
            settings,
            seed,
            paths,
            data_dir,
            ray_address=cluster.address if cluster else None,
            num_cpus=num_cpus,
        )
        resumed = prepare_work_dir(paths, argv[3:])
        _say(("resuming from " + str(paths.checkpoints)) if resumed else f"starting {model}/{method}/seed{seed}")
        _say("command: " + " ".join(argv))
        status = (runner or functools.partial(stream_subprocess, on_line=FilteredRows()))(argv, env)
    finally:
        if cluster is not None:
            from eqpo.backends.verl.ray_cluster import stop_ray_cluster

            stop_ray_cluster(cluster)
    if status != 0:
        raise RuntimeError(
            f"verl exited with status {status} ({model}/{method}/seed{seed}); its output is "
            f"above in this log, its work files in {paths.work_dir}"
        )
    logs.convert_run(paths, val_file(data_dir), settings.options)
    finish_checkpoints(paths, train.max_ckpt_to_keep)
    _say(f"run files written to {paths.run_dir}")
    return paths
