"""What one run is configured with: its training settings and the reproduction options.

- :class:`RunSettings`: everything one (model, method) run trains and evaluates with, resolved once
  from the config at the workflow boundary (:meth:`RunSettings.from_config`) and handed to the
  backends, which read nothing else of the config. Its ``train`` is a typed :class:`TrainSettings`
  whose defaults are config.yaml's ``train`` block (the pipeline's reproduction defaults).
- The pieces :meth:`RunSettings.from_config` is built from: :func:`train_settings` (the ``train``
  block with the per-(model, method) overrides of ``runs.<model>.<method>`` and
  ``runs.<model>.all`` on top), :func:`estimator_options` (the method's ``estimators`` entry with
  the run's ``estimator`` overrides), :func:`run_reward`; and :func:`run_source`, where a run's
  settings come from (the ``source`` of its ``runs`` blocks, else ``train_source``; documentation,
  so not part of the settings a run is rerun for).
- :class:`ReproductionOptions`: the choices where the paper text and the authors' released code
  differ (metric class set, answer extraction at evaluation, group definition, reward), read from
  the ``metrics``, ``groups`` and ``reward`` blocks of the config with a clear error for a bad value.

Kept free of heavy imports: the verl launcher imports it in the driver process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
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


# Keys of the shared `train` config block that only the GPU backends read: the CPU backend
# (eqpo.backends.cpu.trainer.TrainConfig) carries them unread, and Table 3 prints "n/a" for them.
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


SCHEMA_FILE = Path("workflow") / "schemas" / "config.schema.yaml"  # relative to the repository root


def load_config(configfiles: Sequence[str | Path], root: str | Path = ".") -> dict[str, Any]:
    """The config the workflow sees: ``root``/config.yaml with the overlays merged in order, as
    ``snakemake --configfile`` does, then checked against the workflow's schema with its defaults
    filled in, as the Snakefile's ``validate`` does (:func:`apply_schema`). Command-line tools (the
    preflight, the memory plan) read their config through this one function."""
    import yaml

    config: dict[str, Any] = yaml.safe_load((Path(root) / "config.yaml").read_text())
    for file in configfiles:
        config = merge_config(config, yaml.safe_load(Path(file).read_text()) or {})
    return apply_schema(config, Path(root) / SCHEMA_FILE)


def apply_schema(config: Mapping[str, Any], schema_file: str | Path) -> dict[str, Any]:
    """A copy of ``config`` with the schema's defaults filled in wherever the schema describes an
    object (also under ``$ref`` and per-entry schemas), checked against the schema; a config that
    does not match is a ``ValueError`` naming each wrong key and what the schema wants."""
    import copy

    import yaml
    from jsonschema import Draft202012Validator, validators

    schema = yaml.safe_load(Path(schema_file).read_text())
    check_properties = Draft202012Validator.VALIDATORS["properties"]

    def properties_with_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for key, sub in properties.items():
                if isinstance(sub, Mapping) and "default" in sub:
                    instance.setdefault(key, copy.deepcopy(sub["default"]))
        yield from check_properties(validator, properties, instance, schema)

    validator = validators.extend(Draft202012Validator, {"properties": properties_with_defaults})(schema)
    out = copy.deepcopy(dict(config))
    errors = sorted(validator.iter_errors(out), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors]
        raise ValueError(f"the config does not match {schema_file}:\n" + "\n".join(lines))
    return out


# ----------------------------------------------------------------------------------------------
# Typed settings of one run
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainSettings:
    """A run's ``train`` block, typed and checked. The defaults are config.yaml's ``train`` block
    (paper Table 3 with the authors' step budget; a test holds the two equal), so a backend called
    from a user's own code trains as the pipeline does.

    steps: total RL steps (None: ``epochs`` passes over the training set). batch_prompts: prompts
    per step (B). rollouts: samples per prompt (n, the group size). lr: actor learning rate.
    ppo_mini_batch: prompts per PPO update. ppo_epochs: passes over a step's rollouts. clip: PPO
    ratio clip. kl_coef: weight of the low-variance KL to the reference (0: off, as the paper).
    temperature: rollout sampling temperature. test_freq / save_freq: steps between validations /
    checkpoints. grad_clip: max gradient norm. max_prompt_length / max_response_length: tokens.
    GPU path (verl) only: rollout_gpu_memory (vLLM's share of each GPU), tensor_parallel (vLLM),
    gpus (per node), nnodes, device (``cuda``, or ``cpu`` for verl's loop without GPU),
    max_ckpt_to_keep (None: every one), save_hf_model, rollout_data (dump every rollout), loggers
    (experiment trackers), restart_estimator_on_resume.
    """

    steps: int | None = 90
    epochs: int = 15
    batch_prompts: int = 512
    rollouts: int = 10
    lr: float = 5e-7
    ppo_mini_batch: int = 128
    ppo_epochs: int = 1
    clip: float = 0.2
    kl_coef: float = 0.0
    temperature: float = 1.0
    test_freq: int = 5
    save_freq: int = 20
    grad_clip: float = 1.0
    max_prompt_length: int = 4096
    max_response_length: int = 4096
    rollout_gpu_memory: float = 0.6
    tensor_parallel: int = 2
    gpus: int = 4
    nnodes: int = 1
    device: str = "cuda"
    max_ckpt_to_keep: int | None = 1
    save_hf_model: bool = False
    rollout_data: bool = False
    loggers: tuple[str, ...] = ()
    restart_estimator_on_resume: bool = False

    def __post_init__(self) -> None:
        for name, (kind, bound) in _TRAIN_CHECKS.items():
            _check_train_value(name, getattr(self, name), kind, bound)
            if kind is float:  # an integer in YAML (lr: 1) is still a number
                object.__setattr__(self, name, float(getattr(self, name)))
        if self.device not in TRAIN_DEVICES:
            raise ValueError(f"train.device must be one of {list(TRAIN_DEVICES)}, got {self.device!r}")
        if not 0 < self.rollout_gpu_memory <= 1:
            raise ValueError(f"train.rollout_gpu_memory must be in (0, 1], got {self.rollout_gpu_memory!r}")
        if isinstance(self.loggers, str) or not all(isinstance(x, str) for x in self.loggers):
            raise ValueError(f"train.loggers must be a list of tracker names, got {self.loggers!r}")
        object.__setattr__(self, "loggers", tuple(dict.fromkeys(self.loggers)))

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | None) -> TrainSettings:
        """From a ``train`` block (keys not given keep their defaults); an unknown key is an error
        naming the known ones."""
        values = dict(values or {})
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"train: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(**values)  # __post_init__ makes a loggers list a tuple

    def as_dict(self) -> dict[str, Any]:
        """Plain values (``loggers`` a list), as in a config's ``train`` block."""
        return {**asdict(self), "loggers": list(self.loggers)}


TRAIN_DEVICES = ("cuda", "cpu")
# field -> (type, bound): ints are >= bound, numbers > bound, except kl_coef (>= 0); the schema's
# `train` block states the same bounds (a test holds the two equal).
_TRAIN_CHECKS: dict[str, tuple[type, float | None]] = {
    **dict.fromkeys(
        (
            *("steps", "epochs", "batch_prompts", "rollouts", "ppo_mini_batch", "ppo_epochs", "test_freq", "save_freq"),
            *("max_prompt_length", "max_response_length", "tensor_parallel", "gpus", "nnodes", "max_ckpt_to_keep"),
        ),
        (int, 1),
    ),
    **dict.fromkeys(("lr", "clip", "temperature", "grad_clip", "rollout_gpu_memory"), (float, 0)),
    "kl_coef": (float, None),
    **dict.fromkeys(("save_hf_model", "rollout_data", "restart_estimator_on_resume"), (bool, None)),
}
_MAY_BE_NONE = ("steps", "max_ckpt_to_keep")


def _check_train_value(name: str, value: Any, kind: type, bound: float | None) -> None:
    if value is None and name in _MAY_BE_NONE:
        return
    if kind is bool:
        ok = isinstance(value, bool)
    elif isinstance(value, bool) or not isinstance(value, int | float) or (kind is int and not isinstance(value, int)):
        ok = False
    elif kind is int:
        ok = value >= bound
    elif bound is None:  # kl_coef
        ok = value >= 0
    else:
        ok = value > bound
    if not ok:
        what = {
            bool: "true or false",
            int: f"an integer >= {bound}",
            float: f"a number > {bound}" if bound is not None else "a number >= 0",
        }[kind]
        raise ValueError(f"train.{name} must be {what}, got {value!r}")


@dataclass(frozen=True)
class RunSettings:
    """Everything one (model, method) run trains and evaluates with, resolved once from the config
    (:meth:`from_config`): the backends (verl, trl, CPU) take this and read nothing else of it.

    train: the ``train`` block with the run's ``runs.<model>.all`` / ``runs.<model>.<method>``
    overrides. estimator: ``estimators.<method>`` with the run's ``estimator`` options (keyword
    arguments of the method's estimator). options: the reproduction options, with ``reward`` the
    run's own (a ``runs`` block may name one, e.g. the QoQ-Med3 scripts' ``qoq_med3``).
    model_config: ``models.<model>`` (backend, weights path, verl overrides, ...). experiment: the
    config's experiment name. max_samples: ``evaluation.max_samples`` (validation and test prompts
    evaluated; None: all).
    """

    model: str
    method: str
    train: TrainSettings = TrainSettings()
    estimator: Mapping[str, Any] = field(default_factory=dict)
    options: ReproductionOptions = ReproductionOptions()
    model_config: Mapping[str, Any] = field(default_factory=dict)
    experiment: str = "run"
    max_samples: int | None = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], model: str, method: str) -> RunSettings:
        """The run's settings from a (merged, validated) config; errors name the config key."""
        models = config.get("models") or {}
        if model not in models:
            raise ValueError(f"model {model!r} is not defined under `models:` in the config; defined: {sorted(models)}")
        options = replace(reproduction_options(config), reward=run_reward(config, model, method))
        return cls(
            model=model,
            method=method,
            train=TrainSettings.from_mapping(train_settings(config, model, method)),
            estimator=estimator_options(config, model, method),
            options=options,
            model_config=dict(models[model]),
            experiment=str(config.get("experiment", "run")),
            max_samples=(config.get("evaluation") or {}).get("max_samples"),
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain values (JSON- and YAML-able): a Snakemake rule's ``params`` (so that a change of any
        of them reruns the run) and the scripts' :meth:`from_dict`."""
        return {
            "model": self.model,
            "method": self.method,
            "train": self.train.as_dict(),
            "estimator": dict(self.estimator),
            "options": self.options.as_dict(),
            "model_config": dict(self.model_config),
            "experiment": self.experiment,
            "max_samples": self.max_samples,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunSettings:
        """The inverse of :meth:`as_dict`."""
        values = dict(values)
        unknown = sorted(set(values) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"run settings: unknown key(s) {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        return cls(
            **{
                **values,
                "train": TrainSettings.from_mapping(values.get("train")),
                "estimator": dict(values.get("estimator") or {}),
                "options": ReproductionOptions(**(values.get("options") or {})),
                "model_config": dict(values.get("model_config") or {}),
            }
        )


def experiment_runs(config: Mapping[str, Any]) -> list[RunSettings]:
    """The settings of every (model, method) run the config asks for (``base_models`` x ``methods``,
    in that order; each run is repeated over ``seeds``)."""
    return [
        RunSettings.from_config(config, model, method)
        for model in config.get("base_models") or []
        for method in config.get("methods") or []
    ]
