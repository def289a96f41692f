"""What one run is configured with: its training settings and the reproduction options.

- :func:`train_settings`: the ``train`` block with the per-(model, method) overrides of
  ``runs.<model>.<method>`` (and ``runs.<model>.all``) on top. The verl launcher and the CPU
  backend both read a run's settings through this one function. :func:`estimator_options`: the
  method's ``estimators`` entry with the run's ``estimator`` overrides; :func:`run_source`: where
  a run's settings come from (the ``source`` of its ``runs`` blocks, else ``train_source``).
- :class:`ReproductionOptions`: the choices where the paper text and the authors' released code
  differ (metric class set, answer extraction at evaluation, group definition, reward), read from
  the ``metrics``, ``groups`` and ``reward`` blocks of the config with a clear error for a bad value.

Kept free of heavy imports: the verl launcher imports it in the driver process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from eqpo.core.options import CLASS_SETS, EXTRACTIONS, GROUP_DEFINITIONS, MATCHINGS, REWARD_FUNCTIONS  # noqa: F401

RUNS_KEY = "runs"
ALL_METHODS = "all"
# Keys of a `runs` block that are not `train` keys: where its values come from, and estimator
# options (merged over `estimators.<method>`).
SOURCE_KEY = "source"
ESTIMATOR_KEY = "estimator"
REWARD_KEY = "reward"
DEFAULT_TRAIN_SOURCE = "paper Table 3"
# What a backend assumes for a `train` length key that a partial block leaves out (config.yaml sets
# both: these are its values, for users calling the backends with their own settings).
TRAIN_LENGTH_DEFAULTS = {"max_prompt_length": 4096, "max_response_length": 4096}


def train_length(train: Mapping[str, Any], key: str) -> int:
    """``train[key]`` for ``max_prompt_length`` / ``max_response_length`` (tokens), else config.yaml's value."""
    return int(train.get(key) or TRAIN_LENGTH_DEFAULTS[key])


def _overrides(config: Mapping[str, Any], model: str) -> Mapping[str, Any]:
    runs = config.get(RUNS_KEY) or {}
    if not isinstance(runs, Mapping):
        raise ValueError(f"{RUNS_KEY} must map base models to methods to `train` overrides, got {runs!r}")
    per_model = runs.get(model) or {}
    if not isinstance(per_model, Mapping):
        raise ValueError(
            f"{RUNS_KEY}.{model} must map methods (or '{ALL_METHODS}') to `train` overrides, got {per_model!r}"
        )
    return per_model


def _blocks(config: Mapping[str, Any], model: str, method: str) -> list[Mapping[str, Any]]:
    """``[runs.<model>.all, runs.<model>.<method>]`` ({} where absent), checked to be mappings."""
    per_model = _overrides(config, model)
    out = []
    for key in (ALL_METHODS, method):
        block = per_model.get(key) or {}
        if not isinstance(block, Mapping):
            raise ValueError(f"{RUNS_KEY}.{model}.{key} must be a mapping of `train` keys, got {block!r}")
        out.append(block)
    return out


def run_overrides(config: Mapping[str, Any], model: str, method: str) -> dict[str, Any]:
    """The ``train`` keys that ``runs`` changes for (model, method): ``runs.<model>.all`` first,
    then ``runs.<model>.<method>`` (which wins). ``source``, ``estimator`` and ``reward`` are not
    `train` keys."""
    out: dict[str, Any] = {}
    for key, block in zip((ALL_METHODS, method), _blocks(config, model, method), strict=False):
        train = {k: v for k, v in block.items() if k not in (SOURCE_KEY, ESTIMATOR_KEY, REWARD_KEY)}
        unknown = sorted(k for k in train if k not in _KNOWN_TRAIN_KEYS)
        if unknown:
            raise ValueError(
                f"{RUNS_KEY}.{model}.{key}: unknown `train` key(s) {unknown}; known: {sorted(_KNOWN_TRAIN_KEYS)}"
            )
        out.update(train)
    return out


def estimator_options(config: Mapping[str, Any], model: str, method: str) -> dict[str, Any]:
    """The estimator options of one run: ``estimators.<method>``, then the ``estimator`` mapping of
    ``runs.<model>.all`` and ``runs.<model>.<method>`` (e.g. a script's ``k_max: 20``)."""
    out = dict(((config.get("estimators") or {}).get(method)) or {})
    for block in _blocks(config, model, method):
        extra = block.get(ESTIMATOR_KEY) or {}
        if not isinstance(extra, Mapping):
            raise ValueError(f"{RUNS_KEY}.{model}: `estimator` must map estimator options to values, got {extra!r}")
        out.update(extra)
    return out


def run_reward(config: Mapping[str, Any], model: str, method: str) -> str:
    """The reward function one run trains with: the ``reward`` of ``runs.<model>.<method>``, else of
    ``runs.<model>.all``, else config ``reward.function`` (e.g. the QoQ-Med3 scripts' ``qoq_med3``)."""
    for key, block in reversed(list(zip((ALL_METHODS, method), _blocks(config, model, method), strict=False))):
        if block.get(REWARD_KEY) is not None:
            if block[REWARD_KEY] not in REWARD_FUNCTIONS:
                raise ValueError(
                    f"{RUNS_KEY}.{model}.{key}.{REWARD_KEY} must be one of {list(REWARD_FUNCTIONS)}, "
                    f"got {block[REWARD_KEY]!r}"
                )
            return str(block[REWARD_KEY])
    return reproduction_options(config).reward


def run_source(config: Mapping[str, Any], model: str, method: str) -> str:
    """Where a run's settings come from: the ``source`` of ``runs.<model>.<method>``, else of
    ``runs.<model>.all``, else ``train_source`` (default "paper Table 3")."""
    for block in reversed(_blocks(config, model, method)):
        if block.get(SOURCE_KEY):
            return str(block[SOURCE_KEY])
    return str(config.get("train_source") or DEFAULT_TRAIN_SOURCE)


def flatten_overrides(overrides: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """``models.<m>.overrides`` as ``{dotted key: value}``; nested dicts are flattened
    (``{"actor_rollout_ref": {"model": {"use_remove_padding": False}}}`` ->
    ``{"actor_rollout_ref.model.use_remove_padding": False}``). A key may start with ``+``."""
    flat: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        if not isinstance(key, str) or not key.strip("+"):
            raise ValueError(f"verl override keys must be non-empty strings, got {key!r}")
        dotted = f"{prefix}.{key}" if prefix else key
        if isinstance(value, Mapping) and value:
            flat.update(flatten_overrides(value, dotted))
        else:
            flat[dotted] = value
    return flat


def train_settings(config: Mapping[str, Any], model: str, method: str) -> dict[str, Any]:
    """The ``train`` block one (model, method) run uses: ``train`` with ``runs.<model>.all`` and
    ``runs.<model>.<method>`` applied on top (a new dict; the config is not changed)."""
    return {**dict(config.get("train") or {}), **run_overrides(config, model, method)}


# Keys of the shared `train` config block that only the GPU (verl) backend reads.
GPU_ONLY_TRAIN_KEYS = (
    "max_prompt_length",
    "max_response_length",
    "rollout_gpu_memory",
    "tensor_parallel",
    "gpus",
    "nnodes",
    "max_ckpt_to_keep",
    "save_hf_model",
    "rollout_data",
    "loggers",
    "restart_estimator_on_resume",
    "device",
)


def cpu_train_config(train: Mapping[str, Any], cpu: Mapping[str, Any]) -> dict[str, Any]:
    """The CPU backend's settings: a run's `train` settings without the GPU-only keys, plus `cpu`."""
    return {**{k: v for k, v in train.items() if k not in GPU_ONLY_TRAIN_KEYS}, **cpu}


# The `train` keys a run may override (the schema's `runs` block lists the same): the training
# hyperparameters. GPU placement (gpus, nnodes, tensor_parallel, rollout_gpu_memory) and bookkeeping
# keys (checkpoints kept, loggers, ...) stay in `train`, where the SLURM resources and the launcher
# read them for every run alike.
_KNOWN_TRAIN_KEYS = frozenset(
    {
        "steps",
        "epochs",
        "batch_prompts",
        "rollouts",
        "lr",
        "ppo_mini_batch",
        "ppo_epochs",
        "clip",
        "kl_coef",
        "temperature",
        "test_freq",
        "save_freq",
        "grad_clip",
        "max_prompt_length",
        "max_response_length",
    }
)


def _choice(config: Mapping[str, Any], block: str, key: str, allowed: tuple[str, ...], default: str) -> str:
    section = config.get(block) or {}
    if not isinstance(section, Mapping):
        raise ValueError(f"{block} must be a mapping, got {section!r}")
    value = section.get(key, default)
    if value not in allowed:
        raise ValueError(f"{block}.{key} must be one of {list(allowed)}, got {value!r}")
    return value


@dataclass(frozen=True)
class ReproductionOptions:
    """The options where the paper text and the authors' code differ (defaults: the authors' code,
    as in config.yaml).

    class_set: a group's per-class rates over the classes present in that group's ground truth
        (``group_present``, the authors' evaluator) or over every class of the dataset (``dataset``).
    extraction: the answer read at evaluation: the first non-nested ``\\boxed{}``, then a bracketed
        list, then the whole text (``first_box``, the authors' evaluator) or the last balanced box
        (``last_box``, the paper text and the training reward).
    group_definition: explicit groups as the authors' loader builds them (``authors_code``: only
        wholly unknown demographics are unlabeled, a missing part is "unk", sex is ignored for
        Hemorrhage and PAD-UFES-20) or as paper Table 1 (``paper``: sex x age, any missing
        attribute makes the prompt unlabeled).
    reward: ``authors_composite`` (0.5 F1 + 0.3 IoU + 0.1 bbox-JSON format, IoU 0 here),
        ``exact`` (1 when the whole label set is right, else 0), ``f1`` (label-set F1) or
        ``qoq_med3`` (the QoQ-Med3 scripts' reward: 0.5 F1 + 0.2 IoU + 0.1 format + 0.2 Jaccard).
    matching: ``strict`` (case-sensitive, an item outside the label vocabulary is a false
        positive, as the authors' parser) or ``lenient`` (case and punctuation folded, such items
        dropped).
    """

    class_set: str = "group_present"
    extraction: str = "first_box"
    group_definition: str = "authors_code"
    reward: str = "authors_composite"
    matching: str = "strict"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ReproductionOptions:
        d = cls()
        return cls(
            class_set=_choice(config, "metrics", "class_set", CLASS_SETS, d.class_set),
            extraction=_choice(config, "metrics", "extraction", EXTRACTIONS, d.extraction),
            group_definition=_choice(config, "groups", "definition", GROUP_DEFINITIONS, d.group_definition),
            reward=_choice(config, "reward", "function", REWARD_FUNCTIONS, d.reward),
            matching=_choice(config, "reward", "matching", MATCHINGS, d.matching),
        )

    def as_dict(self) -> dict[str, str]:
        return asdict(self)

    def reward_kwargs(self) -> dict[str, str]:
        """The verl reward function's keyword arguments (:func:`eqpo.backends.verl.reward.compute_score`):
        the reward and its matching, and the extraction of the ``prediction`` it reports for validation
        (its score always reads the last box, as the training reward)."""
        return {"function": self.reward, "matching": self.matching, "extraction": self.extraction}

    def config_rows(self) -> dict[str, str]:
        """config key -> value, for the tables that say which reading was used."""
        return {
            "metrics.class_set": self.class_set,
            "metrics.extraction": self.extraction,
            "groups.definition": self.group_definition,
            "reward.function": self.reward,
            "reward.matching": self.matching,
        }


def reproduction_options(config: Mapping[str, Any]) -> ReproductionOptions:
    """:meth:`ReproductionOptions.from_config`."""
    return ReproductionOptions.from_config(config)


def merge_config(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """Snakemake's ``--configfile`` merge: dicts merge recursively, anything else replaces."""
    out = dict(base)
    for key, value in overlay.items():
        out[key] = (
            merge_config(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), Mapping) else value
        )
    return out


def load_config(configfiles: Sequence[str | Path], root: str | Path = ".") -> dict[str, Any]:
    """``root``/config.yaml with the overlays merged in order, as ``snakemake --configfile`` does (no
    schema defaults: the workflow's validation adds those)."""
    import yaml

    config: dict[str, Any] = yaml.safe_load((Path(root) / "config.yaml").read_text())
    for file in configfiles:
        config = merge_config(config, yaml.safe_load(Path(file).read_text()) or {})
    return config
