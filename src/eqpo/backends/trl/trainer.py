"""EQPO (and every estimator of :mod:`eqpo.core.advantages`) inside TRL's ``GRPOTrainer``.

TRL 1.16.0 has no pluggable advantage function: the group normalisation sits inline in
``GRPOTrainer._generate_and_score_completions``. :class:`EqpoGRPOTrainer` keeps everything TRL does
(prompt rendering with images, generation with plain ``generate`` or vLLM, the reward functions,
log-probabilities, the token-level loss) and replaces only the advantages:

1. ``_calculate_rewards`` (called on every process) also gathers each row's dataset, explicit group,
   true group and sample id from the dataset columns (:func:`eqpo.backends.trl.data.to_trl_dataset`), in the
   same order TRL gathers the rewards;
2. after TRL's ``_generate_and_score_completions``, the estimator runs on the GATHERED batch (all
   processes, as TRL normalises the gathered rewards): reward = TRL's weighted sum of the reward
   functions; prompt id = ``"<step>:<position of the prompt in the gathered batch>"`` (TRL's sampler
   puts the ``num_generations`` rollouts of one prompt next to each other, the rows its own
   ``view(-1, num_generations)`` groups; a block whose sample ids differ is an error). A row that
   no reward function could score (all None) is padding: advantage 0, in no statistic. Each
   process then keeps its own slice, exactly where TRL's advantages were.

Each call's statistics are logged like the verl trainer's (``eqpo/group/<dataset>/<group>/{N,rbar,
factor,weight}``, ``eqpo/k/<dataset>``, ``eqpo/adv_time_s`` in TRL's metrics) and the implicit-cluster
assignments of the batch's prompts are appended to ``clusters.jsonl``. The estimator state is
written as ``eqpo_estimator.json`` into every TRL checkpoint folder and restored when training
resumes from one; a checkpoint without it stops the run unless ``restart_estimator_on_resume``.

:func:`run_training` drives one run of the workflow (run-file contract of :mod:`eqpo.runs.files`),
given the run's :class:`eqpo.runs.settings.RunSettings` and the config's ``trl`` block.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from eqpo.backends.trl import TRL_VERSION, require_trl
from eqpo.core.advantages import Estimator, EstimatorStats, make_estimator
from eqpo.core.rewards import LabelParser, score_response
from eqpo.core.vocabularies import get_spec
from eqpo.runs import jsonl
from eqpo.runs.files import (
    CLUSTER_COLUMNS,
    CLUSTER_LOG_FILE,
    CLUSTERS_FILE,
    DYNAMICS_FILE,
    ESTIMATOR_STATE_FILE,
    STEPS_FILE,
    MissingEstimatorStateError,
    cluster_rows,
    estimator_metrics,
    missing_estimator_state,
    step_record,
)
from eqpo.runs.settings import ReproductionOptions, RunSettings, TrainSettings

require_trl()

from accelerate.utils import gather_object  # noqa: E402
from transformers import TrainerCallback  # noqa: E402
from trl import GRPOConfig, GRPOTrainer  # noqa: E402

STATE_FORMAT = "eqpo.backends.trl/1"
ROW_COLUMNS = ("dataset", "group", "true_group", "sample_id")
_CHECKPOINT = re.compile(r"checkpoint-(\d+)$")


# ----------------------------------------------------------------------------------------------
# The reward function (the library's reward, as the CPU and verl backends score)
# ----------------------------------------------------------------------------------------------


def completion_text(completion: Any) -> str:
    """A TRL completion (conversational: a list of messages; else a string) as plain text."""
    if isinstance(completion, str):
        return completion
    parts = []
    for message in completion:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [p.get("text") or "" for p in content if p.get("type") == "text"]
    return "".join(parts)


class EqpoReward:
    """TRL reward function: :func:`eqpo.core.rewards.score_response` of each completion against the
    row's ``ground_truth`` with the dataset's vocabulary, ``options.reward`` / ``options.matching``
    and the last ``\\boxed{}`` (the training reward). ``last`` keeps each scored completion's parse
    (text, prediction, parsed, items, unparsed items) for the rollout log."""

    __name__ = "eqpo_reward"

    def __init__(self, options: ReproductionOptions | None = None, format_weight: float = 0.0):
        self.options = options or ReproductionOptions()
        self.format_weight = float(format_weight)
        self._parsers: dict[str, LabelParser] = {}
        self.last: list[dict] = []

    def parser(self, dataset: str) -> LabelParser:
        if dataset not in self._parsers:
            self._parsers[dataset] = LabelParser(get_spec(dataset).labels, self.options.matching)
        return self._parsers[dataset]

    def __call__(self, prompts, completions, ground_truth=None, dataset=None, **kwargs) -> list[float]:
        if ground_truth is None or dataset is None:
            raise ValueError(
                "the eqpo reward needs the dataset columns `ground_truth` and `dataset` "
                "(eqpo.backends.trl.data.to_trl_dataset writes them)"
            )
        scores, self.last = [], []
        for completion, truth, name in zip(completions, ground_truth, dataset, strict=False):
            text = completion_text(completion)
            result = score_response(
                text,
                truth,
                self.parser(str(name)),
                self.format_weight,
                function=self.options.reward,
                extraction="last_box",
            )
            scores.append(float(result.score))
            self.last.append(
                {
                    "completion": text,
                    "prediction": list(result.prediction),
                    "parsed": result.parsed,
                    "items": result.n_items,
                    "unparsed_items": len(result.unknown),
                }
            )
        return scores


# ----------------------------------------------------------------------------------------------
# Statistics like the verl trainer's
# ----------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def advantage_metrics(seconds: float, stats: EstimatorStats) -> dict[str, float]:
    """``eqpo/adv_time_s`` and the estimator's :func:`eqpo.runs.files.estimator_metrics`."""
    return {"eqpo/adv_time_s": float(seconds), **estimator_metrics(stats)}


@dataclass
class AdvantageCall:
    """One estimator call on a gathered batch."""

    step: int
    advantages: np.ndarray
    rewards: np.ndarray
    prompt_ids: list
    rows: list[dict]
    seconds: float
    stats: EstimatorStats = field(default_factory=EstimatorStats)
    clusters: list[dict] = field(default_factory=list)


def compute_advantages(
    estimator: Estimator, rewards: np.ndarray, rows: Sequence[Mapping], num_generations: int, step: int
) -> AdvantageCall:
    """The estimator on one gathered batch: ``rows`` (dataset, group, true_group, sample_id per
    completion, in TRL's order), ``rewards`` (NaN: unscorable -> padding). Rollouts of one prompt are
    the consecutive blocks of ``num_generations`` rows."""
    n = len(rewards)
    if n != len(rows) or n % num_generations:
        raise ValueError(f"{n} rewards for {len(rows)} rows with {num_generations} generations per prompt")
    for start in range(0, n, num_generations):
        ids = {rows[i]["sample_id"] for i in range(start, start + num_generations)}
        if len(ids) != 1:
            raise RuntimeError(
                f"rows {start}..{start + num_generations - 1} should be the rollouts of one prompt but "
                f"come from samples {sorted(map(str, ids))}: TRL's prompt grouping changed"
            )
    unscorable = np.isnan(rewards)
    prompt_ids = [None if unscorable[i] else f"{step}:{i // num_generations}" for i in range(n)]
    clean = np.where(unscorable, 0.0, rewards)
    datasets = [r["dataset"] for r in rows]
    groups = [r["group"] for r in rows]
    start = time.perf_counter()
    adv = np.asarray(estimator(clean, prompt_ids, datasets, groups), dtype=np.float64)
    seconds = time.perf_counter() - start
    stats = estimator.last_stats()
    clusters = cluster_rows(
        stats,
        step,
        [
            (pid, rows[i]["sample_id"], rows[i]["dataset"], rows[i]["true_group"])
            for i, pid in enumerate(prompt_ids)
            if pid is not None
        ],
    )
    return AdvantageCall(step, adv, rewards, prompt_ids, list(rows), seconds, stats, clusters)


# ----------------------------------------------------------------------------------------------
# The trainer
# ----------------------------------------------------------------------------------------------


class EqpoGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with its group normalisation replaced by ``make_estimator(method, **options)``.

    ``log_dir``: folder of ``clusters.jsonl`` (and, with ``record_rollouts``, ``rollouts.jsonl``: one
    line per completion with its reward, parse, our and TRL's advantage; ``loss_inputs.jsonl``: the
    advantages each loss call received). ``restart_estimator_on_resume``: accept a checkpoint
    without estimator state (the estimator starts afresh). The train dataset must have the columns
    of :func:`eqpo.backends.trl.data.to_trl_dataset` (dataset, group, true_group, sample_id, ground_truth).
    """

    def __init__(
        self,
        *args: Any,
        method: str,
        estimator_options: Mapping | None = None,
        log_dir: str | Path | None = None,
        record_rollouts: bool = False,
        restart_estimator_on_resume: bool = False,
        **kwargs: Any,
    ):
        self.eqpo_method = method
        self.eqpo_estimator_options = dict(estimator_options or {})
        self.estimator = make_estimator(method, **self.eqpo_estimator_options)
        self.eqpo_log_dir = None if log_dir is None else Path(log_dir)
        self.eqpo_record_rollouts = record_rollouts
        self.restart_estimator_on_resume = restart_estimator_on_resume
        self.last_advantage_call: AdvantageCall | None = None
        self.last_trl_advantages: torch.Tensor | None = None
        self.eqpo_step_info: dict[int, dict] = {}
        self._eqpo_batch: dict | None = None
        super().__init__(*args, **kwargs)
        if self.args.multi_objective_aggregation != "sum_then_normalize":
            raise ValueError(
                "EqpoGRPOTrainer feeds the weighted SUM of the reward functions to the estimator; "
                "set multi_objective_aggregation='sum_then_normalize'"
            )
        missing = [c for c in (*ROW_COLUMNS, "ground_truth") if c not in self.train_dataset.column_names]
        if missing:
            raise ValueError(
                f"the train dataset lacks column(s) {missing}; build it with eqpo.backends.trl.data.to_trl_dataset"
            )

    # -- logs ---------------------------------------------------------------------------------
    def _log(self, name: str) -> jsonl.Log | None:
        return None if self.eqpo_log_dir is None else jsonl.Log(self.eqpo_log_dir / name, default=_plain)

    @property
    def _main(self) -> bool:
        return self.accelerator.is_main_process

    # -- rewards + rows, gathered in the same order ---------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        missing = [c for c in ROW_COLUMNS if c not in inputs[0]]
        if missing:
            raise ValueError(f"rows lack {missing}: the estimator needs each prompt's dataset, group and sample id")
        local = [{c: x[c] for c in ROW_COLUMNS} for x in inputs]
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        parses = []
        for func in self.reward_funcs:
            if isinstance(func, EqpoReward) and len(func.last) == len(local):
                parses = func.last
                break
        self._eqpo_batch = {
            "rows": gather_object(local),
            "parses": gather_object(parses) if parses else [],
            "rewards_per_func": rewards_per_func.detach().float().cpu(),
            "local": len(local),
        }
        return rewards_per_func

    def _generate_and_score_completions(self, inputs):
        mode = "train" if self.model.training else "eval"
        start = time.perf_counter()
        output = super()._generate_and_score_completions(inputs)
        if mode != "train":
            return output
        batch, self._eqpo_batch = self._eqpo_batch, None
        if batch is None:
            raise RuntimeError("TRL scored completions without _calculate_rewards: cannot run the estimator")
        rpf = batch["rewards_per_func"]
        rewards = (rpf * self.reward_weights.cpu().float().unsqueeze(0)).nansum(dim=1).double().numpy()
        rewards[torch.isnan(rpf).all(dim=1).numpy()] = np.nan
        step = int(self.state.global_step) + 1
        call = compute_advantages(self.estimator, rewards, batch["rows"], self.num_generations, step)
        n_local = batch["local"]
        process = slice(self.accelerator.process_index * n_local, (self.accelerator.process_index + 1) * n_local)
        trl_adv = output["advantages"]
        self.last_trl_advantages = trl_adv.detach().clone()
        output["advantages"] = torch.as_tensor(call.advantages[process], dtype=trl_adv.dtype, device=trl_adv.device)
        output["eqpo_row"] = torch.arange(process.start, process.stop, device=trl_adv.device)
        logged = self._logs["advantages"]  # TRL's completions table: our advantages, not its own
        for _ in range(min(len(call.advantages), len(logged))):
            logged.pop()
        logged.extend(call.advantages.tolist())
        for name, value in advantage_metrics(call.seconds, call.stats).items():
            self._metrics[mode][name].append(value)
        self.last_advantage_call = call
        self._record(call, batch, trl_adv, process, time.perf_counter() - start)
        return output

    def _record(self, call: AdvantageCall, batch: dict, trl_adv: torch.Tensor, process: slice, seconds: float) -> None:
        parses = batch["parses"]
        valid = ~np.isnan(call.rewards)
        shares: dict[str, list[float]] = {}
        for row, parse in zip(call.rows, parses, strict=False):
            acc = shares.setdefault(row["dataset"], [0.0, 0.0])
            acc[0] += parse["unparsed_items"]
            acc[1] += parse["items"]
        self.eqpo_step_info[call.step] = {
            "reward_mean": float(np.mean(call.rewards[valid])) if valid.any() else float("nan"),
            "time_generate_s": seconds - call.seconds,
            "time_advantage_s": call.seconds,
            "unparsed_shares": {d: (u / t if t else 0.0) for d, (u, t) in shares.items()},
            "stats": call.stats,
        }
        if self.eqpo_log_dir is None:
            return
        # gather_object is collective: every process calls it, the main process writes
        trl_all = gather_object(trl_adv.detach().cpu().tolist()) if self.eqpo_record_rollouts else []
        if not self._main:
            return
        self._log(CLUSTER_LOG_FILE).append(*call.clusters)
        if self.eqpo_record_rollouts:
            records = []
            for i, row in enumerate(call.rows):
                parse = parses[i] if i < len(parses) else {}
                records.append(
                    {
                        "step": call.step,
                        "row": i,
                        **row,
                        "prompt_id": call.prompt_ids[i],
                        "reward": None if np.isnan(call.rewards[i]) else float(call.rewards[i]),
                        "advantage": float(call.advantages[i]),
                        "trl_advantage": float(trl_all[i]),
                        **parse,
                    }
                )
            self._log("rollouts.jsonl").append(*records)

    # -- what the loss receives ---------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        if self.eqpo_record_rollouts and self.eqpo_log_dir is not None and "eqpo_row" in inputs:
            rows = gather_object(inputs["eqpo_row"].tolist())
            advantages = gather_object(inputs["advantages"].detach().float().cpu().tolist())
            if self._main:
                self._log("loss_inputs.jsonl").append(
                    {"step": int(self.state.global_step) + 1, "rows": rows, "advantages": advantages}
                )
        return super()._compute_loss(model, inputs)

    # -- estimator state in TRL's checkpoints --------------------------------------------------
    def estimator_state(self) -> dict:
        return {
            "format": STATE_FORMAT,
            "method": self.eqpo_method,
            "options": self.eqpo_estimator_options,
            "estimator": self.estimator.state_dict(),
        }

    def load_estimator_state(self, state: Mapping) -> None:
        if state.get("format") != STATE_FORMAT:
            raise ValueError(f"not an eqpo.backends.trl estimator state (format {state.get('format')!r})")
        if state.get("method") != self.eqpo_method:
            raise ValueError(f"the checkpoint's estimator is {state.get('method')!r}, this run's {self.eqpo_method!r}")
        if dict(state.get("options") or {}) != self.eqpo_estimator_options:
            raise ValueError(
                f"the checkpoint's estimator options {state.get('options')} differ from this run's "
                f"{self.eqpo_estimator_options}"
            )
        self.estimator.load_state_dict(state["estimator"])

    def _save_checkpoint(self, model, trial):
        super()._save_checkpoint(model, trial)
        if self.args.should_save:
            folder = Path(self._get_output_dir(trial=trial)) / f"checkpoint-{self.state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / (ESTIMATOR_STATE_FILE + ".tmp")
            tmp.write_text(json.dumps(self.estimator_state(), default=_plain))
            os.replace(tmp, folder / ESTIMATOR_STATE_FILE)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        """The checkpoint's weights through ``from_pretrained``: transformers 5 saves some models
        (Qwen2.5-VL among them) under their legacy key names, which the Trainer's plain
        ``load_state_dict(strict=False)`` silently skips, resuming with the base weights."""
        target = self.accelerator.unwrap_model(model if model is not None else self.model)
        folder = Path(resume_from_checkpoint)
        plain = (folder / "config.json").exists() and any(
            (folder / n).exists()
            for n in (
                "model.safetensors",
                "model.safetensors.index.json",
                "pytorch_model.bin",
                "pytorch_model.bin.index.json",
            )
        )
        if self.is_fsdp_enabled or not plain or not hasattr(type(target), "from_pretrained"):
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        loaded = type(target).from_pretrained(str(folder), config=target.config, dtype=next(target.parameters()).dtype)
        target.load_state_dict(loaded.state_dict(), strict=True)
        del loaded

    def _load_optimizer_and_scheduler(self, checkpoint):
        super()._load_optimizer_and_scheduler(checkpoint)
        if checkpoint is None:
            return
        path = Path(checkpoint) / ESTIMATOR_STATE_FILE
        if path.exists():
            self.load_estimator_state(json.loads(path.read_text()))
        elif not self.restart_estimator_on_resume:
            raise missing_estimator_state(checkpoint, "EqpoGRPOTrainer")
        match = _CHECKPOINT.search(str(Path(checkpoint).name))
        if match and self._main and self.eqpo_log_dir is not None:
            for name in (CLUSTER_LOG_FILE, "rollouts.jsonl", "loss_inputs.jsonl"):
                self._log(name).truncate_after(int(match.group(1)))


# ----------------------------------------------------------------------------------------------
# Settings
# ----------------------------------------------------------------------------------------------

#: The :class:`TrainSettings` fields that the trl backend reads; the GPU-cluster ones are ignored.
TRAIN_KEYS = (
    "steps",
    "epochs",
    "batch_prompts",
    "rollouts",
    "lr",
    "ppo_epochs",
    "clip",
    "kl_coef",
    "temperature",
    "test_freq",
    "save_freq",
    "grad_clip",
    "max_response_length",
    "restart_estimator_on_resume",
    "rollout_data",
)
#: keys of the config's `trl` block that are ours, not GRPOConfig's.
OWN_KEYS = ("micro_batch", "dtype", "val_max_samples", "eval_batch_size", "format_weight", "threads", "predict_vllm")
#: prompts per greedy ``generate`` call in validation and test prediction (``trl.eval_batch_size``;
#: the schema's default too).
EVAL_BATCH_SIZE = 8


@dataclass(frozen=True)
class TrlSettings:
    """What one trl run trains with: the run's :class:`TrainSettings` (:data:`TRAIN_KEYS`) and the
    `trl` block (:data:`OWN_KEYS` plus any ``GRPOConfig`` field, e.g. ``loss_type``, ``use_vllm``,
    ``bf16``). ``max_response_length``: tokens; ``micro_batch``: completions per forward/backward."""

    max_steps: int
    batch_prompts: int
    rollouts: int
    micro_batch: int
    test_freq: int
    save_freq: int
    max_response_length: int
    restart_estimator_on_resume: bool
    record_rollouts: bool
    val_max_samples: int | None
    eval_batch_size: int
    format_weight: float
    dtype: str | None
    grpo: dict

    def fingerprint(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("val_max_samples", "eval_batch_size")}


def trl_settings(train: TrainSettings, trl: Mapping[str, Any] | None, n_train: int) -> TrlSettings:
    """:class:`TrlSettings` from the run's training settings, the config's `trl` block and the number
    of training prompts (``n_train``: the step budget when ``train.steps`` is None)."""
    trl = dict(trl or {})
    known = {f for f in GRPOConfig.__dataclass_fields__}
    unknown = sorted(k for k in trl if k not in OWN_KEYS and k not in known)
    if unknown:
        raise ValueError(
            f"trl: unknown key(s) {unknown}; valid: {sorted(OWN_KEYS)} and the fields of trl.GRPOConfig {TRL_VERSION}"
        )
    batch, n = train.batch_prompts, train.rollouts
    if n < 2:
        raise ValueError(f"need rollouts >= 2 (GRPO needs a group), got {n}")
    steps = train.steps
    if steps is None:
        if n_train < batch:
            raise ValueError(f"batch_prompts={batch} exceeds the {n_train} training prompts")
        steps = train.epochs * (n_train // batch)
    trl.pop("threads", None), trl.pop("predict_vllm", None)  # read by eqpo.workflow.trl
    micro = int(trl.pop("micro_batch", n))
    if (batch * n) % micro:
        raise ValueError(f"trl.micro_batch={micro} must divide batch_prompts x rollouts = {batch * n}")
    taken = {
        "learning_rate",
        "num_generations",
        "generation_batch_size",
        "per_device_train_batch_size",
        "gradient_accumulation_steps",
        "steps_per_generation",
        "max_steps",
        "max_completion_length",
        "temperature",
        "epsilon",
        "beta",
        "num_iterations",
        "max_grad_norm",
        "save_steps",
        "seed",
        "output_dir",
        "reward_weights",
    }
    clash = sorted(taken & set(trl))
    if clash:
        raise ValueError(f"trl: {clash} come from the `train` block (and the run); set them there")
    return TrlSettings(
        max_steps=int(steps),
        batch_prompts=batch,
        rollouts=n,
        micro_batch=micro,
        test_freq=train.test_freq,
        save_freq=train.save_freq,
        max_response_length=train.max_response_length,
        restart_estimator_on_resume=train.restart_estimator_on_resume,
        record_rollouts=train.rollout_data,
        val_max_samples=trl.pop("val_max_samples", None),
        eval_batch_size=int(trl.pop("eval_batch_size", EVAL_BATCH_SIZE)),
        format_weight=float(trl.pop("format_weight", 0.0)),
        dtype=trl.pop("dtype", None),
        grpo={
            "learning_rate": train.lr,
            "epsilon": train.clip,
            "beta": train.kl_coef,
            "temperature": train.temperature,
            "num_iterations": train.ppo_epochs,
            "max_grad_norm": train.grad_clip,
            **trl,
        },
    )


def grpo_config(settings: TrlSettings, output_dir: str | Path, seed: int, world_size: int = 1) -> GRPOConfig:
    """TRL's config: one optimizer step per generation of batch_prompts x rollouts completions
    (split into micro-batches of ``micro_batch`` completions per process, gradients accumulated)."""
    total = settings.batch_prompts * settings.rollouts
    if total % (settings.micro_batch * world_size):
        raise ValueError(
            f"batch_prompts x rollouts = {total} is not a multiple of micro_batch x processes "
            f"= {settings.micro_batch * world_size}"
        )
    accumulate = total // (settings.micro_batch * world_size)
    use_cpu = not torch.cuda.is_available()
    kwargs = {
        "output_dir": str(output_dir),
        "seed": seed,
        "data_seed": seed,
        "max_steps": settings.max_steps,
        "num_generations": settings.rollouts,
        "per_device_train_batch_size": settings.micro_batch,
        "gradient_accumulation_steps": accumulate,
        "steps_per_generation": accumulate,
        "max_completion_length": settings.max_response_length,
        "save_strategy": "steps",
        "save_steps": settings.save_freq,
        "save_only_model": False,
        "logging_steps": 1,
        "report_to": "none",
        "use_cpu": use_cpu,
        "remove_unused_columns": False,
        "scale_rewards": "group",
        "disable_tqdm": True,
        "dataloader_num_workers": 0,
        **settings.grpo,
    }
    return GRPOConfig(**kwargs)


# ----------------------------------------------------------------------------------------------
# One run of the workflow
# ----------------------------------------------------------------------------------------------


class RunCallback(TrainerCallback):
    """steps.jsonl after every step, a validation (dynamics.jsonl) at step 0, every ``test_freq``
    steps and at the end, and a stop after ``stop_after`` steps (a kill, for tests)."""

    def __init__(
        self,
        trainer_ref: Callable[[], EqpoGRPOTrainer],
        work: Path,
        validate: Callable[[int], dict],
        test_freq: int,
        stop_after: int | None,
    ):
        self.trainer_ref, self.work, self.validate = trainer_ref, work, validate
        self.test_freq, self.stop_after = test_freq, stop_after
        self.steps = jsonl.Log(work / STEPS_FILE, default=_plain)
        self.dynamics = jsonl.Log(work / DYNAMICS_FILE, default=_plain)
        self._t0 = None
        self._last_info: dict = {}
        self.killed = False

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps.truncate_after(state.global_step)
        self.dynamics.truncate_after(state.global_step)
        if state.global_step == 0 and not self.dynamics.records():
            self.validate(0)

    def on_step_begin(self, args, state, control, **kwargs):
        self._t0 = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        trainer = self.trainer_ref()
        step = state.global_step
        total = time.perf_counter() - (self._t0 or time.perf_counter())
        # with num_iterations > 1 (train.ppo_epochs) a generation serves several steps: they report
        # its rollouts' reward, and no generation or advantage time of their own
        info = trainer.eqpo_step_info.pop(step, None)
        if info is None:
            info = {**self._last_info, "time_generate_s": 0.0, "time_advantage_s": 0.0, "stats": None}
        self._last_info = info
        if trainer.accelerator.is_main_process:
            gen, adv = info.get("time_generate_s", 0.0), info.get("time_advantage_s", 0.0)
            self.steps.append(
                step_record(
                    step,
                    info.get("reward_mean", float("nan")),
                    total,
                    gen,
                    adv,
                    max(total - gen - adv, 0.0),
                    info.get("unparsed_shares"),
                    info.get("stats"),
                )
            )
        if step % self.test_freq == 0 or step == state.max_steps:
            self.validate(step)
        if self.stop_after is not None and step >= self.stop_after and step < state.max_steps:
            self.killed = True
            control.should_training_stop = True
            control.should_save = False
        return control


def _checkpoints(folder: Path) -> list[Path]:
    found = [
        p for p in folder.glob("checkpoint-*") if _CHECKPOINT.search(p.name) and (p / "trainer_state.json").exists()
    ]
    return sorted(found, key=lambda p: int(_CHECKPOINT.search(p.name).group(1)))


def _hash_file(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_path(settings: RunSettings) -> str:
    """The run's base model: ``models.<model>.path`` (a hub id or a local directory)."""
    path = settings.model_config.get("path")
    if not path:
        raise ValueError(f"models.{settings.model} has no `path` (a hub id or local directory of the weights)")
    return str(path)


def run_fingerprint(settings: RunSettings, trl_run: TrlSettings, seed: int, train_parquet: str | Path) -> str:
    """What a run's work in progress (``run_dir/ckpt``) belongs to, as JSON: a rerun resumes from its
    checkpoints only while this is unchanged. The method, seed, estimator options, reproduction
    options (the run's reward among them), base model, training file (its SHA-256), TRL version and
    the TRL settings except the validation's sample size and batch (which change no training step);
    `train` keys the trl backend does not read (:data:`TRAIN_KEYS`) are not part of it."""
    model_dir = model_path(settings)
    return json.dumps(
        {
            "method": settings.method,
            "seed": seed,
            "estimator": dict(settings.estimator),
            "settings": trl_run.fingerprint(),
            "options": settings.options.as_dict(),
            "model": str(Path(model_dir).resolve()) if Path(model_dir).is_dir() else model_dir,
            "train": _hash_file(train_parquet),
            "trl": TRL_VERSION,
        },
        sort_keys=True,
        default=str,
    )


def run_training(
    train_parquet: str | Path,
    val_parquet: str | Path,
    settings: RunSettings,
    trl: Mapping[str, Any] | None,
    seed: int,
    run_dir: str | Path,
    stop_after: int | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Train ``settings.method`` (estimator options ``settings.estimator``) from the base model
    ``settings.model_config['path']`` on the export with TRL, with ``settings.train``, the `trl` block
    ``trl`` and the reward ``settings.options.reward`` (the run's own), and write the run files into
    ``run_dir``: ``model/`` (the trained model and processor), ``dynamics.jsonl``, ``steps.jsonl``,
    ``clusters.parquet``, ``estimator.json`` (the estimator's final state), and with
    ``train.rollout_data`` ``rollouts.jsonl`` / ``loss_inputs.jsonl``. Validation answers
    ``trl.val_max_samples`` prompts, else ``settings.max_samples`` (None: all).

    Work in progress lives in ``run_dir/ckpt`` (TRL checkpoints with the estimator state, the logs);
    a rerun after a kill resumes from the latest checkpoint when it belongs to this exact run (same
    settings, base model and training file), else starts afresh. ``stop_after`` stops after that
    many steps without finishing, as a kill would (for tests)."""
    from eqpo.backends.trl.data import generate_answers, load_model, load_processor, records, to_trl_dataset
    from eqpo.core.metrics import fairness_summary
    from eqpo.data.export import predictions_from_outputs, read_export, subsample

    method, estimator_options, options = settings.method, dict(settings.estimator), settings.options
    model_dir = model_path(settings)
    run_dir = Path(run_dir)
    work = run_dir / "ckpt"
    out_dir = work / "trainer"
    torch.manual_seed(seed)
    dataset = to_trl_dataset(train_parquet)
    trl_run = trl_settings(settings.train, {"val_max_samples": settings.max_samples, **(trl or {})}, len(dataset))
    val_rows = subsample(read_export(val_parquet), trl_run.val_max_samples, seed)
    val_recs = records(val_rows)
    fingerprint = run_fingerprint(settings, trl_run, seed, train_parquet)
    marker = work / "fingerprint.json"
    if work.exists() and (not marker.exists() or marker.read_text() != fingerprint):
        log(f"{work} belongs to a run with other settings or inputs: starting afresh")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    marker.write_text(fingerprint)
    resume = _checkpoints(out_dir)
    if not resume:
        for name in (STEPS_FILE, DYNAMICS_FILE, CLUSTER_LOG_FILE, "rollouts.jsonl", "loss_inputs.jsonl"):
            jsonl.Log(work / name).reset()

    processor = load_processor(model_dir)
    model = load_model(model_dir, trl_run.dtype)
    reward = EqpoReward(options, trl_run.format_weight)
    config = grpo_config(trl_run, out_dir, seed, int(os.environ.get("WORLD_SIZE", "1")))
    holder: dict[str, EqpoGRPOTrainer] = {}

    def validate(step: int) -> dict:
        trainer = holder["trainer"]
        record = {}
        if trainer.accelerator.is_main_process:
            model_ = trainer.accelerator.unwrap_model(trainer.model)
            answers = generate_answers(
                model_, processor, val_recs, trl_run.max_response_length, trl_run.eval_batch_size
            )
            preds = predictions_from_outputs(val_rows, answers, options)
            wall = sum(r["time_step_s"] for r in jsonl.Log(work / STEPS_FILE).records() if r["step"] <= step)
            record = {
                "step": step,
                "wall_time_s": round(wall, 3),
                **fairness_summary(preds, options.class_set),
                "unparseable": float((preds["prediction"].map(len) == 0).mean()),
            }
            for d, part in preds.groupby("dataset"):
                total = float(part["items"].sum())
                record[f"unparsed_item_share/{d}"] = float(part["unparsed_items"].sum()) / total if total else 0.0
            jsonl.Log(work / DYNAMICS_FILE, default=_plain).append(record)
            log(
                f"step {step}: validation F1 {record.get('F1', float('nan')):.4f}, "
                f"unparseable {record['unparseable']:.1%}"
            )
        trainer.accelerator.wait_for_everyone()
        return record

    callback = RunCallback(lambda: holder["trainer"], work, validate, trl_run.test_freq, stop_after)
    trainer = EqpoGRPOTrainer(
        model=model,
        reward_funcs=[reward],
        args=config,
        train_dataset=dataset,
        processing_class=processor,
        callbacks=[callback],
        method=method,
        estimator_options=estimator_options,
        log_dir=work,
        record_rollouts=trl_run.record_rollouts,
        restart_estimator_on_resume=trl_run.restart_estimator_on_resume,
    )
    holder["trainer"] = trainer
    if resume:
        log(f"resuming from {resume[-1]}")
    trainer.train(resume_from_checkpoint=str(resume[-1]) if resume else None)
    if callback.killed:
        return {"stopped_at": trainer.state.global_step}
    if trainer.accelerator.is_main_process:
        _finish(trainer, model_dir, processor, work, run_dir, trl_run.record_rollouts)
    trainer.accelerator.wait_for_everyone()
    return {"steps": trainer.state.global_step}


_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".safetensors.index.json", ".bin.index.json")


def copy_processor_files(base_dir: str | Path, target: str | Path) -> list[str]:
    """Copy the base model directory's tokenizer, processor and chat-template files into ``target``
    (training changes the weights only; copying keeps the processor exactly as the base model
    ships it, also where transformers could not rebuild a part of it, e.g. the video processor
    without torchvision)."""
    copied = []
    for path in sorted(Path(base_dir).iterdir()):
        if (
            not path.is_file()
            or path.name in ("config.json", "generation_config.json")
            or path.name.endswith(_WEIGHT_SUFFIXES)
        ):
            continue
        shutil.copy2(path, Path(target) / path.name)
        copied.append(path.name)
    return copied


def _finish(
    trainer: EqpoGRPOTrainer, base: str | Path, processor: Any, work: Path, run_dir: Path, keep_rollouts: bool
) -> None:
    """Declared outputs: model/, dynamics.jsonl, steps.jsonl, clusters.parquet (and the final
    estimator state, estimator.json); then drop ckpt/. ``base``: the base model's directory (its
    processor files are copied) or hub id (the loaded processor is saved)."""
    model_dir = run_dir / "model"
    if model_dir.exists():
        shutil.rmtree(model_dir)
    trainer.accelerator.unwrap_model(trainer.model).save_pretrained(model_dir)
    if Path(base).is_dir():
        copy_processor_files(base, model_dir)
    else:
        processor.save_pretrained(model_dir)
    clusters = pd.DataFrame(jsonl.Log(work / CLUSTER_LOG_FILE).records(), columns=list(CLUSTER_COLUMNS))
    clusters = clusters.drop_duplicates(["sample_id", "step"], keep="last")
    clusters["sample_id"] = clusters["sample_id"].astype(str)
    for column in ("step", "cluster", "k"):
        clusters[column] = clusters[column].astype("int64")
    clusters["true_group"] = clusters["true_group"].astype(object)
    clusters.to_parquet(run_dir / CLUSTERS_FILE, index=False)
    (run_dir / "estimator.json").write_text(json.dumps(trainer.estimator_state(), default=_plain))
    names = [DYNAMICS_FILE, STEPS_FILE] + (["rollouts.jsonl", "loss_inputs.jsonl"] if keep_rollouts else [])
    for name in names:
        source = work / name
        if source.exists():
            shutil.copyfile(source, run_dir / name)
        else:
            (run_dir / name).write_text("")
    shutil.rmtree(work)


def run_prediction(
    test_parquet: str | Path,
    model_dir: str | Path,
    out_parquet: str | Path,
    options: ReproductionOptions | None = None,
    max_new_tokens: int = TrainSettings.max_response_length,
    max_samples: int | None = None,
    batch_size: int = EVAL_BATCH_SIZE,
    use_vllm: str | bool = "auto",
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> pd.DataFrame:
    """Greedy answers of the trained model on the test export -> the predictions table, scored with
    ``options`` (the run's reproduction options, its own reward). ``max_new_tokens``: tokens per
    answer (the workflow passes the run's ``train.max_response_length``); ``max_samples``: a seeded
    subset of the test prompts (None: all); ``batch_size``: prompts per ``generate`` call.
    ``use_vllm``: True, False or "auto" (vLLM when it is installed and a GPU is present)."""
    from eqpo.backends.trl.data import (
        generate_answers,
        load_model,
        load_processor,
        records,
        vllm_answers,
        vllm_available,
    )
    from eqpo.data.export import predictions_from_outputs, read_export, subsample

    rows = subsample(read_export(test_parquet), max_samples, seed)
    recs = records(rows)
    vllm = vllm_available() and torch.cuda.is_available() if use_vllm == "auto" else bool(use_vllm)
    if vllm:
        log(f"answering {len(recs)} test prompts with vLLM ({model_dir})")
        answers = vllm_answers(model_dir, recs, max_new_tokens, seed)
    else:
        log(f"answering {len(recs)} test prompts with generate ({model_dir})")
        model = load_model(model_dir)
        if torch.cuda.is_available():
            model = model.to("cuda")
        answers = generate_answers(model, load_processor(model_dir), recs, max_new_tokens, batch_size)
    table = predictions_from_outputs(rows, answers, options)
    out = Path(out_parquet)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    log(
        f"{len(table)} predictions -> {out} (mean reward {table['reward'].mean():.4f}, "
        f"unparseable {(table['prediction'].map(len) == 0).mean():.1%})"
    )
    return table


__all__ = [
    "EqpoGRPOTrainer",
    "EqpoReward",
    "MissingEstimatorStateError",
    "TrlSettings",
    "compute_advantages",
    "grpo_config",
    "model_path",
    "run_fingerprint",
    "run_prediction",
    "run_training",
    "trl_settings",
]
