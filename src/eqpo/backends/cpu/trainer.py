"""CPU backend: supervised warm start, RL training with the library's estimators, prediction.

The RL loop has the paper's structure (docs/method.md §6, verl's PPO trainer): each step draws B
prompts from the unified training set (all datasets), samples n rollouts per prompt from the current
policy, scores them with the library's reward, computes advantages with the method's estimator, and
takes PPO-clip updates over mini-batches of prompts against the rollout-time log-probabilities (KL
off by default). Every ``test_freq`` steps the validation split is answered greedily and scored with
the full metric suite. Checkpoints every ``save_freq`` steps hold the policy, the optimizer, the
estimator state and every random-number state, so a killed run resumes to the same result.

Files written into the run directory (the contract of :mod:`eqpo.runs.files`, which the analysis reads):
``dynamics.jsonl`` (one line per validation), ``steps.jsonl`` (one line per step with timings),
``clusters.parquet`` (implicit-group assignments of a fixed probe set of training prompts at every
validation step, for eqpo / eqpo_nd / drpo), ``final.pt`` (the trained policy) and ``ckpt/last.pt``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from eqpo.backends.cpu.policy import MultiTaskPolicy, PolicyConfig, action_labels, labels_to_target
from eqpo.core.advantages import HierarchicalScaler, make_estimator
from eqpo.core.groups import regroup, resample_for_rs
from eqpo.core.metrics import fairness_summary
from eqpo.core.rewards import LabelParser, render_answer, score_response
from eqpo.core.vocabularies import DatasetSpec, get_spec
from eqpo.runs import jsonl
from eqpo.runs.files import (
    CLUSTER_COLUMNS,
    CLUSTER_LOG_FILE,
    CLUSTERS_FILE,
    DYNAMICS_FILE,
    STEPS_FILE,
    UNPARSED_SHARE_PREFIX,
    cluster_rows,
    step_record,
)
from eqpo.runs.settings import GPU_ONLY_TRAIN_KEYS, ReproductionOptions, TrainSettings


def _from_dict(cls, values: dict, what: str):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {what} setting(s) {unknown}; valid: {sorted(known)}")
    return cls(**values)


# The config's `cpu` block: settings only the CPU backend has (TrainConfig's fields beyond TrainSettings).
CPU_KEYS = ("probe_prompts", "threads")


@dataclass(frozen=True)
class TrainConfig(TrainSettings):
    """A run's training settings as the CPU backend reads them: the run's :class:`TrainSettings`
    (the `train` block with its ``runs`` overrides; defaults config.yaml's, paper Table 3 names)
    plus the config's ``cpu`` block (:meth:`from_settings`).

    probe_prompts: training prompts whose implicit group is tracked for the cluster-stability
    analysis (0: none). threads: torch CPU threads. The GPU-only `train` keys
    (:data:`eqpo.runs.settings.GPU_ONLY_TRAIN_KEYS`) are carried along and not read.
    """

    probe_prompts: int = 256
    threads: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, least in (("probe_prompts", 0), ("threads", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"cpu.{name} must be an integer >= {least}, got {value!r}")

    @classmethod
    def from_settings(cls, train: TrainSettings, cpu: Mapping[str, Any] | None = None) -> TrainConfig:
        """``train`` (a run's :attr:`eqpo.runs.settings.RunSettings.train`) with the ``cpu`` block's
        keys (:data:`CPU_KEYS`; absent ones keep their defaults); an unknown ``cpu`` key is an error."""
        cpu = dict(cpu or {})
        unknown = sorted(set(cpu) - set(CPU_KEYS))
        if unknown:
            raise ValueError(f"cpu: unknown key(s) {unknown}; known: {list(CPU_KEYS)}")
        return cls(**{f.name: getattr(train, f.name) for f in fields(TrainSettings)}, **cpu)

    def read(self) -> dict[str, Any]:
        """The settings the CPU trainer reads (every field but the GPU-only `train` keys): what a
        checkpoint must have been written with to be resumed."""
        return {k: v for k, v in asdict(self).items() if k not in GPU_ONLY_TRAIN_KEYS}


@dataclass(frozen=True)
class PretrainConfig:
    """Supervised warm start standing in for a pretrained model's biases.

    minority_keep: share of the training rows outside each dataset's most common demographic group
    that the warm start sees (the majority group is kept whole), so the starting policy is fit
    mostly on the majority. epochs, lr, batch_size: Adam training of the cross-entropy.
    """

    epochs: int = 20
    lr: float = 1e-2
    batch_size: int = 128
    minority_keep: float = 0.15

    @classmethod
    def from_dict(cls, values: dict) -> PretrainConfig:
        return _from_dict(cls, values, "pretraining")


# ----------------------------------------------------------------------------------------------
# Cohort access
# ----------------------------------------------------------------------------------------------


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The numeric feature columns f0, f1, ... in numeric order."""
    return sorted((c for c in table.columns if c.startswith("f") and c[1:].isdigit()), key=lambda c: int(c[1:]))


def feature_widths(table: pd.DataFrame) -> dict[str, int]:
    """Each dataset's input width n: it fills f0..f{n-1} on every row and leaves the later feature
    columns empty (datasets of a cohort may have different numbers of features). Anything else is
    an error naming the dataset and the columns concerned."""
    features = feature_columns(table)
    if not features:
        raise ValueError("the cohort has no feature columns f0, f1, ...; the CPU backend needs them")
    widths, problems = {}, []
    for name, part in table.groupby("dataset", sort=True):
        filled = part[features].notna().to_numpy()
        full = filled.all(axis=0)
        width = int(np.argmin(full)) if not full.all() else len(features)
        partial = [c for c, f, e in zip(features, full, ~filled.any(axis=0), strict=False) if not f and not e]
        later = [c for c in features[width:] if part[c].notna().any()]
        if width == 0:
            problems.append(f"{name} has no feature values (the CPU backend needs f0, f1, ... on every row)")
        elif partial or later:
            problems.append(
                f"{name} fills f0..f{width - 1} but also has values in {sorted(set(partial + later))} "
                "(a dataset's features must be f0..f{n-1}, filled on every row)"
            )
        widths[name] = width
    if problems:
        raise ValueError("; ".join(problems))
    return widths


class Cohort:
    """Column arrays of a cohort table (see :mod:`eqpo.data.demo.cohort` for the columns). Datasets may
    have different input widths (:func:`feature_widths`); columns beyond a dataset's width are 0."""

    def __init__(self, table: pd.DataFrame, specs: dict[str, DatasetSpec]):
        missing = sorted(set(table["dataset"]) - set(specs))
        if missing:
            raise ValueError(f"no dataset spec for {missing}")
        self.table = table.reset_index(drop=True)
        self.features = feature_columns(self.table)
        self.widths = feature_widths(self.table)
        self.x = torch.tensor(np.nan_to_num(self.table[self.features].to_numpy(np.float32), nan=0.0))
        self.dataset = self.table["dataset"].to_numpy(object)
        self.labels = [list(v) for v in self.table["labels"]]
        self.sample_id = self.table["sample_id"].to_numpy(object)
        self.group = np.array([g if isinstance(g, str) else None for g in self.table["group"]], dtype=object)
        true_group = self.table["true_group"] if "true_group" in self.table else self.table["group"]
        true_group = true_group.astype(object).where(true_group.notna(), self.table["group"].astype(object))
        self.true_group = np.array([g if isinstance(g, str) else None for g in true_group], dtype=object)
        self.specs = specs

    def __len__(self) -> int:
        return len(self.table)


def specs_for(table: pd.DataFrame) -> dict[str, DatasetSpec]:
    return {name: get_spec(name) for name in sorted(table["dataset"].unique())}


def split(table: pd.DataFrame, name: str) -> pd.DataFrame:
    part = table[table["split"] == name]
    if part.empty:
        raise ValueError(f"the cohort has no {name!r} split; splits present: {sorted(table['split'].unique())}")
    return part


# ----------------------------------------------------------------------------------------------
# Sampling and scoring
# ----------------------------------------------------------------------------------------------


def sample_actions(
    policy: MultiTaskPolicy, x: torch.Tensor, dataset: str, temperature: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One action per row of x: (actions, log-probs), sampled with ``generator``."""
    dist = policy.distribution(x, dataset, temperature)
    if policy.specs[dataset].multi_label:
        actions = torch.bernoulli(dist.base_dist.probs, generator=generator)
    else:
        actions = torch.multinomial(dist.probs, 1, generator=generator).squeeze(-1)
    return actions, dist.log_prob(actions)


class Scorer:
    """Renders actions as text answers and scores them with the library's reward (``function`` and
    ``matching`` as configured under ``reward``; see :func:`eqpo.core.rewards.score_response`)."""

    def __init__(self, specs: dict[str, DatasetSpec], function: str = "f1", matching: str = "lenient"):
        self.specs, self.function = specs, function
        self.parsers = {name: LabelParser(spec.labels, matching) for name, spec in specs.items()}

    @classmethod
    def from_options(cls, specs: dict[str, DatasetSpec], options: ReproductionOptions) -> Scorer:
        return cls(specs, options.reward, options.matching)

    def __call__(self, dataset: str, action: np.ndarray, truth: list[str], extraction: str = "last_box"):
        text = render_answer(action_labels(action, self.specs[dataset]))
        return text, score_response(text, truth, self.parsers[dataset], function=self.function, extraction=extraction)


def unparsed_item_shares(datasets: np.ndarray, unparsed: np.ndarray, items: np.ndarray) -> dict[str, float]:
    """dataset -> share of answer items that name no label (0 when the dataset's answers have none)."""
    out = {}
    for d in sorted(set(datasets)):
        mask = datasets == d
        total = float(items[mask].sum())
        out[str(d)] = float(unparsed[mask].sum()) / total if total else 0.0
    return out


def _prefixed(shares: dict[str, float]) -> dict[str, float]:
    """{dataset: share} -> {"unparsed_item_share/<dataset>": share} (flat log keys)."""
    return {f"{UNPARSED_SHARE_PREFIX}{d}": v for d, v in shares.items()}


def predict(policy: MultiTaskPolicy, cohort: Cohort, scorer: Scorer, extraction: str = "last_box") -> pd.DataFrame:
    """Greedy answers for every sample: the predictions table of docs/method.md §4.1 plus response, reward and
    the answer's item counts (``items``, ``unparsed_items``: items naming no label). ``extraction``:
    which part of the response is the answer (``metrics.extraction``)."""
    rows = []
    with torch.no_grad():
        for dataset in sorted(set(cohort.dataset)):
            idx = np.flatnonzero(cohort.dataset == dataset)
            actions = policy.greedy(cohort.x[idx], dataset).numpy()
            for i, action in zip(idx, actions, strict=False):
                text, result = scorer(dataset, action, cohort.labels[i], extraction)
                rows.append((i, text, result.prediction, result.score, result.n_items, len(result.unknown)))
    order = [r[0] for r in rows]
    table = cohort.table.loc[order, ["sample_id", "dataset", "labels", "age", "sex"]].copy()
    table["prediction"] = [r[2] for r in rows]
    table["response"] = [r[1] for r in rows]
    table["reward"] = [r[3] for r in rows]
    table["items"] = [r[4] for r in rows]
    table["unparsed_items"] = [r[5] for r in rows]
    return table.sort_index().reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Warm start
# ----------------------------------------------------------------------------------------------


def _majority_skewed(train: pd.DataFrame, keep: float, rng: np.random.Generator) -> pd.DataFrame:
    group = train["group"].astype(object)
    if "true_group" in train:  # the demo cohort knows the masked groups too
        group = train["true_group"].astype(object).where(train["true_group"].notna(), group)
    group = group.where(group.notna(), "none")
    majority = group.groupby(train["dataset"]).agg(lambda g: g.value_counts().index[0])
    is_major = group.to_numpy() == train["dataset"].map(majority).to_numpy()
    return train[is_major | (rng.random(len(train)) < keep)]


def pretrain(
    table: pd.DataFrame,
    policy_config: PolicyConfig,
    config: PretrainConfig,
    seed: int,
    log: Callable[[str], None] = print,
) -> MultiTaskPolicy:
    """Supervised warm start on a majority-skewed subset of the training split."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    train = _majority_skewed(split(table, "train"), config.minority_keep, rng)
    specs = specs_for(table)
    cohort = Cohort(train, specs)
    policy = MultiTaskPolicy(policy_config, list(specs.values()))
    optimizer = torch.optim.Adam(policy.parameters(), lr=config.lr)
    targets = {
        d: labels_to_target([cohort.labels[i] for i in np.flatnonzero(cohort.dataset == d)], specs[d]) for d in specs
    }
    rows = {d: np.flatnonzero(cohort.dataset == d) for d in specs}
    log(
        f"warm start on {len(train)} of {int((table['split'] == 'train').sum())} training samples "
        f"(majority group kept whole, minority_keep={config.minority_keep})"
    )
    for epoch in range(config.epochs):
        order = rng.permutation(len(cohort))
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start : start + config.batch_size]
            loss = torch.zeros(())
            for d in specs:
                mask = cohort.dataset[batch] == d
                if not mask.any():
                    continue
                local = np.searchsorted(rows[d], batch[mask])
                logits = policy.logits(cohort.x[batch[mask]], d)
                if specs[d].multi_label:
                    loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
                        logits, targets[d][local], reduction="sum"
                    ) / len(specs[d].labels)
                else:
                    loss = loss + torch.nn.functional.cross_entropy(logits, targets[d][local], reduction="sum")
            loss = loss / len(batch)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        if epoch == 0 or (epoch + 1) % 5 == 0 or epoch + 1 == config.epochs:
            log(f"epoch {epoch + 1}/{config.epochs}: cross-entropy {total / len(order):.4f}")
    return policy


def save_policy(policy: MultiTaskPolicy, path: str | Path, **extra: Any) -> None:
    _atomic_save({"meta": policy.meta(), "state": policy.state_dict(), **extra}, Path(path))


def load_policy(path: str | Path) -> MultiTaskPolicy:
    blob = torch.load(path, weights_only=False)
    policy = MultiTaskPolicy.from_meta(blob["meta"])
    policy.load_state_dict(blob["state"])
    return policy


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# RL training
# ----------------------------------------------------------------------------------------------


@dataclass
class _Rollouts:
    prompt: np.ndarray  # (N,) position of the response's prompt in the step's batch
    rows: np.ndarray  # (B,) cohort rows of the batch's prompts
    actions: dict[str, torch.Tensor]  # per dataset, actions of its responses in batch order
    resp_of: dict[str, np.ndarray]  # per dataset, response positions
    old_logp: torch.Tensor  # (N,)
    rewards: np.ndarray  # (N,)


class RLTrainer:
    """One RL run of one method on one warm-started policy; ``fit()`` resumes from ``run_dir/ckpt``.

    ``estimator_options``: keyword arguments of the method's estimator; ``config``: the run's
    training settings (:meth:`TrainConfig.from_settings`). ``options``: the reproduction options
    (reward, matching, group definition, metric class set, answer extraction at validation); default
    :class:`eqpo.runs.settings.ReproductionOptions`. The cohort's ``group`` column is rebuilt from
    age and sex by ``options.group_definition``. :func:`eqpo.workflow.pipeline.run_train_cpu` builds
    all of these from a :class:`eqpo.runs.settings.RunSettings`.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        init_policy: str | Path,
        method: str,
        estimator_options: dict,
        config: TrainConfig,
        seed: int,
        run_dir: str | Path,
        resample: bool | None = None,
        log: Callable[[str], None] = print,
        options: ReproductionOptions | None = None,
    ):
        self.config, self.method, self.seed, self.log = config, method, seed, log
        self.options = options or ReproductionOptions()
        self.run_dir = Path(run_dir)
        specs = specs_for(table)
        table = regroup(table, self.options.group_definition, specs)
        train = split(table, "train")
        if resample if resample is not None else method == "grpo_rs":
            before = len(train)
            train = resample_for_rs(train, seed, self.options.group_definition, specs)
            log(f"GRPO+RS: training set oversampled from {before} to {len(train)} rows")
        self.train = Cohort(train, specs)
        self.val = Cohort(split(table, "val"), specs)
        self.scorer = Scorer.from_options(specs, self.options)
        self.policy = load_policy(init_policy)
        self.reference = load_policy(init_policy) if config.kl_coef > 0 else None
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=config.lr)
        self.estimator = make_estimator(method, **estimator_options)
        self.rng = np.random.default_rng(seed)
        self.generator = torch.Generator().manual_seed(seed)
        self.probe_generator = torch.Generator().manual_seed(seed + 1_000_003)
        steps_per_epoch = len(self.train) // config.batch_prompts
        if steps_per_epoch == 0:
            raise ValueError(f"batch_prompts={config.batch_prompts} exceeds the {len(self.train)} training prompts")
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = config.steps if config.steps is not None else config.epochs * steps_per_epoch
        self.step = 0
        self.epoch_order = self.rng.permutation(len(self.train))
        self.probe = self._choose_probe()
        # Work in progress lives in ckpt/ (not a declared output, so Snakemake leaves it alone when it
        # cleans up after a killed job); the declared files are written when the run completes.
        self.work = self.run_dir / "ckpt"
        self.dynamics = jsonl.Log(self.work / DYNAMICS_FILE)
        self.steps_log = jsonl.Log(self.work / STEPS_FILE)
        self.clusters_log = jsonl.Log(self.work / CLUSTER_LOG_FILE)
        self.ckpt = self.work / "last.pt"
        self.fingerprint = json.dumps(
            {
                "method": method,
                "seed": seed,
                "estimator": estimator_options,
                "config": config.read(),
                "options": self.options.as_dict(),
                "init_policy": hashlib.sha256(Path(init_policy).read_bytes()).hexdigest(),
                "train": hashlib.sha256("|".join(map(str, self.train.sample_id)).encode()).hexdigest(),
            },
            sort_keys=True,
            default=str,
        )

    # -- batches ----------------------------------------------------------------------------
    def _choose_probe(self) -> np.ndarray:
        if not isinstance(self.estimator, HierarchicalScaler):
            return np.zeros(0, dtype=int)
        candidates = np.arange(len(self.train))
        if self.estimator.use_demographics:
            candidates = candidates[[g is None for g in self.train.group]]
        _, first = np.unique(self.train.sample_id[candidates], return_index=True)  # RS duplicates once
        candidates = candidates[np.sort(first)]
        rng = np.random.default_rng(self.seed + 7)
        return np.sort(rng.choice(candidates, size=min(self.config.probe_prompts, len(candidates)), replace=False))

    def _batch_rows(self) -> np.ndarray:
        position = self.step % self.steps_per_epoch
        if position == 0 and self.step > 0:
            self.epoch_order = self.rng.permutation(len(self.train))
        b = self.config.batch_prompts
        return self.epoch_order[position * b : (position + 1) * b]

    def _generate(self, rows: np.ndarray) -> _Rollouts:
        n = self.config.rollouts
        prompt = np.repeat(np.arange(len(rows)), n)
        resp_rows = rows[prompt]
        old_logp = torch.zeros(len(prompt))
        rewards = np.zeros(len(prompt))
        self._items = np.zeros(len(prompt))
        self._unparsed = np.zeros(len(prompt))
        actions, resp_of = {}, {}
        with torch.no_grad():
            for d in sorted(set(self.train.dataset[rows])):
                resp = np.flatnonzero(self.train.dataset[resp_rows] == d)
                act, logp = sample_actions(
                    self.policy, self.train.x[resp_rows[resp]], d, self.config.temperature, self.generator
                )
                actions[d], resp_of[d] = act, resp
                old_logp[resp] = logp
                for j, a in zip(resp, act.numpy(), strict=False):
                    result = self.scorer(d, a, self.train.labels[resp_rows[j]])[1]
                    rewards[j] = result.score
                    self._items[j], self._unparsed[j] = result.n_items, len(result.unknown)
        return _Rollouts(prompt, rows, actions, resp_of, old_logp, rewards)

    # -- update -----------------------------------------------------------------------------
    def _update(self, ro: _Rollouts, advantages: np.ndarray) -> None:
        adv = torch.tensor(advantages, dtype=torch.float32)
        resp_rows = ro.rows[ro.prompt]
        n_prompts = len(ro.rows)
        for _ in range(self.config.ppo_epochs):
            prompt_order = self.rng.permutation(n_prompts)
            for start in range(0, n_prompts, self.config.ppo_mini_batch):
                chosen = np.zeros(n_prompts, dtype=bool)
                chosen[prompt_order[start : start + self.config.ppo_mini_batch]] = True
                losses = []
                for d, resp in ro.resp_of.items():
                    sel = chosen[ro.prompt[resp]]
                    if not sel.any():
                        continue
                    idx = resp[sel]
                    x = self.train.x[resp_rows[idx]]
                    dist = self.policy.distribution(x, d, self.config.temperature)
                    logp = dist.log_prob(ro.actions[d][sel])
                    ratio = torch.exp(logp - ro.old_logp[idx])
                    a = adv[idx]
                    surrogate = torch.minimum(
                        ratio * a, torch.clamp(ratio, 1 - self.config.clip, 1 + self.config.clip) * a
                    )
                    loss = -surrogate
                    if self.reference is not None:
                        with torch.no_grad():
                            ref_logp = self.reference.distribution(x, d, self.config.temperature).log_prob(
                                ro.actions[d][sel]
                            )
                        log_ratio = ref_logp - logp
                        loss = loss + self.config.kl_coef * (torch.exp(log_ratio) - 1 - log_ratio)
                    losses.append(loss)
                loss = torch.cat(losses).mean()
                self.optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.config.grad_clip)
                self.optimizer.step()

    # -- validation and probes --------------------------------------------------------------
    def _validate(self, wall: float) -> dict:
        preds = predict(self.policy, self.val, self.scorer, self.options.extraction)
        record = {
            "step": self.step,
            "wall_time_s": round(wall, 3),
            **fairness_summary(preds, self.options.class_set),
            "unparseable": float((preds["prediction"].map(len) == 0).mean()),
            **_prefixed(
                unparsed_item_shares(
                    preds["dataset"].to_numpy(object),
                    preds["unparsed_items"].to_numpy(float),
                    preds["items"].to_numpy(float),
                )
            ),
        }
        self.dynamics.append(record)
        return record

    def _log_clusters(self) -> None:
        if len(self.probe) == 0:
            return
        n = self.config.rollouts
        rows = self.probe
        with torch.no_grad():
            for d in sorted(set(self.train.dataset[rows])):
                mine = rows[self.train.dataset[rows] == d]
                x = self.train.x[np.repeat(mine, n)]
                act, _ = sample_actions(self.policy, x, d, self.config.temperature, self.probe_generator)
                rewards = np.array(
                    [
                        self.scorer(d, a, self.train.labels[r])[1].score
                        for a, r in zip(act.numpy(), np.repeat(mine, n), strict=False)
                    ]
                ).reshape(len(mine), n)
                # the probe prompts' clusters under the last call's clustering, with its chosen k
                assigned = self.estimator.assign_clusters(d, rewards)
                probe = dataclasses.replace(
                    self.estimator.last_stats(), clusters=dict(zip(mine.tolist(), assigned, strict=False))
                )
                prompts = [
                    (r, self.train.sample_id[r], d, self.train.true_group[r])
                    for r in mine.tolist()
                    if probe.clusters[r] >= 0
                ]
                self.clusters_log.append(*cluster_rows(probe, self.step, prompts))

    # -- checkpoints ------------------------------------------------------------------------
    def _save(self) -> None:
        _atomic_save(
            {
                "step": self.step,
                "policy": self.policy.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "estimator": self.estimator.state_dict(),
                "rng": self.rng.bit_generator.state,
                "generator": self.generator.get_state(),
                "probe_generator": self.probe_generator.get_state(),
                "epoch_order": self.epoch_order,
                "fingerprint": self.fingerprint,
            },
            self.ckpt,
        )

    def _resume(self) -> bool:
        """Continue from ckpt/last.pt when it belongs to this exact run (same settings, warm start
        and training set); anything else starts afresh."""
        if not self.ckpt.exists():
            return False
        blob = torch.load(self.ckpt, weights_only=False)
        if blob.get("fingerprint") != self.fingerprint:
            self.log(f"ignoring {self.ckpt}: it was written by a run with other settings or inputs")
            return False
        self.step = blob["step"]
        self.policy.load_state_dict(blob["policy"])
        self.optimizer.load_state_dict(blob["optimizer"])
        self.estimator.load_state_dict(blob["estimator"])
        self.rng.bit_generator.state = blob["rng"]
        self.generator.set_state(blob["generator"])
        self.probe_generator.set_state(blob["probe_generator"])
        self.epoch_order = blob["epoch_order"]
        for log in (self.dynamics, self.steps_log, self.clusters_log):
            log.truncate_after(self.step)
        return True

    # -- the loop ---------------------------------------------------------------------------
    def fit(self, stop_after: int | None = None) -> None:
        """Train to ``total_steps`` (resuming if a checkpoint exists). ``stop_after`` ends the
        process-like run early without a final checkpoint, as a kill would (for tests)."""
        torch.set_num_threads(self.config.threads)
        self.work.mkdir(parents=True, exist_ok=True)
        if self._resume():
            self.log(f"resumed from {self.ckpt} at step {self.step}")
        else:
            for log in (self.dynamics, self.steps_log, self.clusters_log):
                log.path.unlink(missing_ok=True)
            self._validate(0.0)
        start = time.perf_counter()
        last_f1 = float("nan")
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            file=sys.stderr,
            mininterval=2.0,
            desc=f"{self.method} seed{self.seed}",
            disable=False,
        )
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            rows = self._batch_rows()
            ro = self._generate(rows)
            t1 = time.perf_counter()
            uids = np.array([f"{self.step}:{p}" for p in ro.prompt], dtype=object)
            adv = self.estimator(
                ro.rewards, uids, self.train.dataset[rows][ro.prompt], self.train.group[rows][ro.prompt]
            )
            t2 = time.perf_counter()
            self._update(ro, adv)
            t3 = time.perf_counter()
            self.step += 1
            shares = unparsed_item_shares(self.train.dataset[ro.rows][ro.prompt], self._unparsed, self._items)
            self.steps_log.append(
                step_record(
                    self.step,
                    ro.rewards.mean(),
                    t3 - t0,
                    t1 - t0,
                    t2 - t1,
                    t3 - t2,
                    shares,
                    self.estimator.last_stats(),
                )
            )
            if self.step % self.config.test_freq == 0 or self.step == self.total_steps:
                last_f1 = self._validate(time.perf_counter() - start)["F1"]
                self._log_clusters()
            if self.step % self.config.save_freq == 0 or self.step == self.total_steps:
                self._save()
            bar.update(1)
            bar.set_postfix(reward=f"{ro.rewards.mean():.3f}", val_F1=f"{last_f1:.3f}", refresh=False)
            if stop_after is not None and self.step >= stop_after:
                bar.close()
                return
        bar.close()
        self._finish()

    def _finish(self) -> None:
        """Write the declared outputs, then drop the work directory (a later forced rerun starts afresh)."""
        clusters = pd.DataFrame(self.clusters_log.records(), columns=list(CLUSTER_COLUMNS))
        clusters.to_parquet(self.run_dir / CLUSTERS_FILE, index=False)
        for log in (self.dynamics, self.steps_log):
            shutil.copyfile(log.path, self.run_dir / log.path.name)
        save_policy(self.policy, self.run_dir / "final.pt", step=self.step, method=self.method, seed=self.seed)
        shutil.rmtree(self.work)
