"""eqpo's advantage estimators inside verl 0.9.1's advantage-estimator registry.

Importing this module registers the estimators verl lacks (:data:`REGISTERED`: ``eqpo``, ``eqpo_nd``,
``eqpo_nodemo``, ``grpo_dro``, ``drpo``, the methods of :mod:`eqpo.core.methods` whose ``verl_builtin`` is
false) with ``verl.trainer.ppo.core_algos.register_adv_est``; select one with ``algorithm.adv_estimator=<name>``.
:data:`METHOD_TO_VERL` maps each of the project's methods to the verl estimator that runs it.

How a registered function gets what verl does not pass
------------------------------------------------------
verl calls an estimator as ``fn(token_level_rewards, response_mask, index=uid, config=algorithm)``
(``verl.trainer.ppo.ray_trainer.compute_advantage``): no dataset, no demographic group, no stable
prompt id. Those come from a **batch context**, a module-level hand-off that the trainer subclass
(:class:`eqpo.backends.verl.trainer.EqpoSyncTrainer`, ``trainer.v1.trainer_mode=eqpo_sync``) sets just
before it lets verl compute the advantages, and clears right after::

    with batch_context(datasets, groups, sample_ids, is_padding, uids=uids):
        ...verl's compute_advantage(...)...   # calls the registered function

One row per response, in the batch's row order. ``uids`` (verl's per-step prompt uid of each row)
is checked against the ``index`` verl passes, so a context that belongs to another batch or another
row order is an error, never a silent mismatch. Padding rows (verl's synthetic rows, see
``verl/trainer/ppo/padding_utils.py``) go to the estimator with prompt id None: they enter no
statistic and get advantage 0.

Without a context the registered functions raise :class:`MissingBatchContextError`, because
silently treating every prompt as one unlabeled dataset would run a different method than the one
asked for. A user who wants exactly that passes ``+algorithm.eqpo.allow_missing_context=true``:
then every row is one unlabeled dataset ("Unknown"), the uid is the prompt id and the sample id, and
rows whose uid starts with "pad" or whose response mask is all zero are padding.

Options and state
-----------------
Estimator options are read from ``config["eqpo"]`` (the ``algorithm`` section verl passes):
``+algorithm.eqpo.k_max=3 +algorithm.eqpo.scope=history`` and so on; each must be an option of
:func:`eqpo.core.advantages.make_estimator` for the method (a typo is an error), plus the extension's
own ``allow_missing_context``. One estimator object per method lives for the whole process, so
history statistics and Group-DRO weights accumulate over steps; :func:`estimator_state` /
:func:`load_estimator_state` carry them through checkpoints, and :func:`last_advantage_stats`
reports the last call (time, and the estimator's ``last_stats()`` with the cluster of each sample id).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from verl.trainer.ppo import core_algos

from eqpo.core.advantages import Estimator, check_estimator_options, make_estimator, normalize_group
from eqpo.core.methods import METHODS, VERL_REGISTERED

# ----------------------------------------------------------------------------------------------
# Names
# ----------------------------------------------------------------------------------------------

#: verl ``algorithm.adv_estimator`` for each of the project's methods (from :mod:`eqpo.core.methods`). grpo,
#: rloo and reinforce_pp are verl's own estimators (cross-checked against eqpo.core.advantages in
#: tests/backends/verl/test_verl_crosscheck.py); grpo_rs is verl's grpo trained on the resampled parquet
#: (train_rs.parquet from eqpo.data.export). The others are registered by this module under their own
#: names (none clashes with a verl 0.9.1 built-in). eqpo_nodemo (EQPO with every prompt unlabeled)
#: masks the groups inside the estimator, so it trains on train.parquet, as the demographics-free
#: export would, while its cluster log keeps the true groups for the analysis.
METHOD_TO_VERL: dict[str, str] = {m.key: m.verl_estimator for m in METHODS}

#: verl estimator name -> eqpo.core.advantages method, for the estimators this module registers.
REGISTERED: dict[str, str] = dict(VERL_REGISTERED)

#: Keys of ``algorithm.eqpo`` that configure this extension, not the eqpo estimator.
EXTENSION_KEYS = frozenset({"allow_missing_context"})

#: The v1 trainer mode registered by :mod:`eqpo.backends.verl.trainer`.
TRAINER_NAME = "eqpo_sync"
#: The module verl must import in every process (VERL_USE_EXTERNAL_MODULES / model.external_lib).
EXTERNAL_MODULE = "eqpo.backends.verl"
#: The environment variable naming a run's verl export directory (custom datasets' specs, see __init__).
DATA_DIR_ENV = "EQPO_VERL_DATA_DIR"
#: ``reward.custom_reward_function.path`` / ``.name`` of the reward function.
REWARD_PATH = "pkg://eqpo.backends.verl.reward"
REWARD_NAME = "compute_score"

STATE_FORMAT = "eqpo.backends.verl.estimators/1"


class MissingBatchContextError(RuntimeError):
    """A registered eqpo estimator was called without the per-row batch context it needs."""


# ----------------------------------------------------------------------------------------------
# The batch context (module-level hand-off from the trainer subclass)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BatchContext:
    """What the registered estimators need per row (one row per response, in batch order).

    datasets: the dataset (domain) of each row's prompt. groups: explicit demographic group or None.
    sample_ids: stable prompt id (``extra_info.sample_id``), used to report clusters.
    is_padding: True for verl's synthetic padding rows. uids: verl's per-step prompt uid of each
    row (checked against the ``index`` verl passes); None skips the check and uses ``index``.
    true_groups: demographic group for analysis only (the cluster log); estimators ignore it.
    """

    datasets: tuple
    groups: tuple
    sample_ids: tuple
    is_padding: tuple
    uids: tuple | None = None
    true_groups: tuple | None = None

    def __len__(self) -> int:
        return len(self.datasets)

    @property
    def n_padding(self) -> int:
        return int(sum(self.is_padding))


_CONTEXT: BatchContext | None = None


def make_batch_context(
    datasets: Sequence,
    groups: Sequence,
    sample_ids: Sequence,
    is_padding: Sequence,
    uids: Sequence | None = None,
    true_groups: Sequence | None = None,
) -> BatchContext:
    """Validate per-row lists into a :class:`BatchContext` (groups normalised, missing -> None)."""
    columns = {"datasets": datasets, "groups": groups, "sample_ids": sample_ids, "is_padding": is_padding}
    if uids is not None:
        columns["uids"] = uids
    if true_groups is not None:
        columns["true_groups"] = true_groups
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"batch context columns must have one entry per row; got lengths {lengths}")
    return BatchContext(
        datasets=tuple(None if d is None else str(d) for d in datasets),
        groups=tuple(normalize_group(g) for g in groups),
        sample_ids=tuple(sample_ids),
        is_padding=tuple(bool(p) for p in is_padding),
        uids=None if uids is None else tuple(str(u) for u in uids),
        true_groups=None if true_groups is None else tuple(normalize_group(g) for g in true_groups),
    )


def set_batch_context(
    datasets: Sequence,
    groups: Sequence,
    sample_ids: Sequence,
    is_padding: Sequence,
    uids: Sequence | None = None,
    true_groups: Sequence | None = None,
) -> BatchContext:
    """Hand the rows of the NEXT advantage computation to the registered estimators.

    Stays set until :func:`clear_batch_context`; prefer the :func:`batch_context` context manager.
    """
    global _CONTEXT
    _CONTEXT = make_batch_context(datasets, groups, sample_ids, is_padding, uids, true_groups)
    return _CONTEXT


def use_batch_context(context: BatchContext | None) -> None:
    """Set an already built context (None clears it)."""
    global _CONTEXT
    if context is not None and not isinstance(context, BatchContext):
        raise TypeError(f"expected a BatchContext, got {type(context).__name__}")
    _CONTEXT = context


def clear_batch_context() -> None:
    use_batch_context(None)


def current_batch_context() -> BatchContext | None:
    return _CONTEXT


@contextlib.contextmanager
def batch_context(*args: Any, **kwargs: Any) -> Iterator[BatchContext]:
    """``with batch_context(ctx)`` or ``with batch_context(datasets, groups, ...)``: set, then clear."""
    if len(args) == 1 and not kwargs and isinstance(args[0], BatchContext):
        use_batch_context(args[0])
    else:
        set_batch_context(*args, **kwargs)
    try:
        yield _CONTEXT
    finally:
        clear_batch_context()


def _missing_context_message(name: str) -> str:
    return (
        f"advantage estimator {name!r} needs each row's dataset and demographic group, which verl does not "
        "pass to estimators. Train with the eqpo trainer: trainer.v1.trainer_mode=eqpo_sync and "
        "VERL_USE_EXTERNAL_MODULES=eqpo.backends.verl (it sets the batch context from extra_info), or set it "
        "yourself with eqpo.backends.verl.estimators.set_batch_context(datasets, groups, sample_ids, is_padding, "
        "uids) before verl computes advantages. To run on all rows as ONE unlabeled dataset instead, pass "
        "+algorithm.eqpo.allow_missing_context=true."
    )


def _fallback_context(index: Any, response_mask: torch.Tensor) -> BatchContext:
    """All rows one unlabeled dataset; padding = uid 'pad...' or an all-zero response mask."""
    if index is None:
        raise ValueError("allow_missing_context needs verl's uid index to group rollouts by prompt")
    uids = [str(u) for u in index]
    empty = (response_mask.reshape(len(uids), -1).sum(dim=-1) == 0).tolist()
    padding = [u.startswith("pad") or e for u, e in zip(uids, empty, strict=False)]
    return make_batch_context([None] * len(uids), [None] * len(uids), uids, padding, uids=uids)


def _check_rows(context: BatchContext, bs: int, index: Any) -> list[str]:
    """The uid of every row; raises when the context does not describe this batch."""
    if len(context) != bs:
        raise RuntimeError(
            f"the batch context has {len(context)} rows but verl passed {bs}; "
            "set_batch_context must describe exactly the batch being computed"
        )
    verl_uids = None if index is None else [str(u) for u in index]
    if verl_uids is not None and len(verl_uids) != bs:
        raise RuntimeError(f"verl passed {len(verl_uids)} uids for {bs} rows")
    if context.uids is not None and verl_uids is not None and list(context.uids) != verl_uids:
        i = next(i for i, (a, b) in enumerate(zip(context.uids, verl_uids, strict=False)) if a != b)
        raise RuntimeError(
            f"batch context row {i} has uid {context.uids[i]!r} but verl's row {i} has uid {verl_uids[i]!r}: "
            "the context belongs to another batch or another row order"
        )
    uids = verl_uids if verl_uids is not None else (list(context.uids) if context.uids is not None else None)
    if uids is None:
        raise RuntimeError("no prompt ids: verl passed no uid index and the batch context has no uids")
    return uids


# ----------------------------------------------------------------------------------------------
# Options and the persistent estimators
# ----------------------------------------------------------------------------------------------

_ESTIMATORS: dict[str, tuple[dict, Estimator]] = {}
_PENDING_STATE: dict[str, dict] = {}
_LAST_STATS: dict[str, Any] = {}


def options_from_config(config: Any) -> dict:
    """The ``eqpo`` section of verl's ``algorithm`` config as a plain dict ({} when absent)."""
    if config is None:
        return {}
    section = config.get("eqpo", None) if hasattr(config, "get") else getattr(config, "eqpo", None)
    if section is None:
        return {}
    try:
        from omegaconf import OmegaConf

        if OmegaConf.is_config(section):
            section = OmegaConf.to_container(section, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf ships with verl
        pass
    if not isinstance(section, Mapping):
        raise TypeError(f"algorithm.eqpo must be a mapping of estimator options, got {section!r}")
    return dict(section)


def split_options(method: str, options: Mapping) -> tuple[dict, dict]:
    """(estimator options, extension options); unknown keys are an error naming the valid ones."""
    extension = {k: v for k, v in options.items() if k in EXTENSION_KEYS}
    est = {k: v for k, v in options.items() if k not in EXTENSION_KEYS}
    check_estimator_options(method, est, where="algorithm.eqpo: ", also=EXTENSION_KEYS)
    if method == "drpo" and est.get("kl_quantile") is not None:
        raise ValueError(
            "drpo's kl_quantile needs per-response KL, which verl does not pass to advantage "
            "estimators; leave algorithm.eqpo.kl_quantile unset (off, as in the released code)"
        )
    return est, extension


def get_estimator(method: str, options: Mapping | None = None) -> Estimator:
    """The process's estimator for ``method``, built on first use with ``options`` (and any state
    loaded by :func:`load_estimator_state`). Later calls must give the same options."""
    options = dict(options or {})
    if method in _ESTIMATORS:
        built_with, est = _ESTIMATORS[method]
        if built_with != options:
            raise ValueError(
                f"estimator {method!r} was built with options {built_with} but is now asked for {options}; "
                "options cannot change during a run (call reset_estimators() to start over)"
            )
        return est
    est = make_estimator(method, **options)
    if method in _PENDING_STATE:
        est.load_state_dict(_PENDING_STATE.pop(method))
    _ESTIMATORS[method] = (options, est)
    return est


def reset_estimators() -> None:
    """Forget every estimator, pending state, last statistics and the batch context."""
    _ESTIMATORS.clear()
    _PENDING_STATE.clear()
    _LAST_STATS.clear()
    clear_batch_context()


def estimator_state() -> dict:
    """JSON-serialisable state of every estimator of this process (built or loaded, not yet used)."""
    states = dict(_PENDING_STATE)
    states.update({method: est.state_dict() for method, (_, est) in _ESTIMATORS.items()})
    return {"format": STATE_FORMAT, "estimators": states}


def load_estimator_state(state: Mapping) -> None:
    """Restore :func:`estimator_state` output: built estimators load now, others on first use."""
    if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"not an eqpo.backends.verl estimator state (expected format {STATE_FORMAT!r})")
    for method, sub in state["estimators"].items():
        if method not in REGISTERED.values():
            raise ValueError(f"estimator state for unknown method {method!r}; known: {sorted(REGISTERED)}")
        if method in _ESTIMATORS:
            _ESTIMATORS[method][1].load_state_dict(sub)
        else:
            _PENDING_STATE[method] = dict(sub)


def clear_last_stats() -> None:
    _LAST_STATS.clear()


def last_advantage_stats() -> dict:
    """Statistics of the last registered-estimator call ({} before any): method, time_s (seconds in
    the estimator), n_rows, n_padding and estimator (the :class:`eqpo.core.advantages.EstimatorStats` of
    the call, its clusters keyed by sample id)."""
    return dict(_LAST_STATS)


# ----------------------------------------------------------------------------------------------
# The registered functions
# ----------------------------------------------------------------------------------------------


def _record(method: str, est: Estimator, seconds: float, context: BatchContext, uids: list) -> None:
    """Keep the call's statistics (:meth:`Estimator.last_stats`), its clusters keyed by sample id."""
    sample_of_uid: dict = {}
    for uid, sid, pad in zip(uids, context.sample_ids, context.is_padding, strict=False):
        if not pad:
            sample_of_uid.setdefault(uid, sid)
    stats = est.last_stats()
    clusters = {sample_of_uid[uid]: c for uid, c in stats.clusters.items() if uid in sample_of_uid}
    _LAST_STATS.clear()
    _LAST_STATS.update(
        {
            "method": method,
            "time_s": seconds,
            "n_rows": len(uids),
            "n_padding": context.n_padding,
            "estimator": dataclasses.replace(stats, clusters=clusters),
        }
    )


def compute_eqpo_advantage(
    name: str, token_level_rewards: torch.Tensor, response_mask: torch.Tensor, index: Any = None, config: Any = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The body of every registered function (``name`` = the verl estimator name)."""
    method = REGISTERED[name]
    est_options, ext = split_options(method, options_from_config(config))
    bs = token_level_rewards.shape[0]
    context = _CONTEXT
    if context is None:
        if not ext.get("allow_missing_context", False):
            raise MissingBatchContextError(_missing_context_message(name))
        context = _fallback_context(index, response_mask)
    uids = _check_rows(context, bs, index)
    prompt_ids = [None if pad else uid for uid, pad in zip(uids, context.is_padding, strict=False)]
    rewards = token_level_rewards.detach().sum(dim=-1).to(torch.float64).cpu().numpy()
    est = get_estimator(method, est_options)
    start = time.perf_counter()
    adv = est(rewards, prompt_ids, list(context.datasets), list(context.groups))
    seconds = time.perf_counter() - start
    _record(method, est, seconds, context, uids)
    per_row = torch.as_tensor(adv, dtype=token_level_rewards.dtype, device=token_level_rewards.device)
    advantages = per_row.unsqueeze(-1) * response_mask
    return advantages, advantages


def _make_verl_fn(name: str):
    def fn(token_level_rewards, response_mask, index=None, config=None, **kwargs):
        return compute_eqpo_advantage(name, token_level_rewards, response_mask, index=index, config=config)

    fn.__name__ = fn.__qualname__ = f"compute_{name}_outcome_advantage"
    fn.__doc__ = (
        f"verl advantage estimator {name!r} (eqpo.core.advantages method {REGISTERED[name]!r}): the outcome "
        "score (token rewards summed per row) -> one advantage per response, broadcast over the "
        "response tokens x response_mask. Needs the batch context (see eqpo.backends.verl.estimators)."
    )
    fn._eqpo_verl_ext = True
    return fn


def _register(name: str, fn) -> None:
    """Register with verl's own decorator; replace only an earlier copy of this module's function
    (a module reload), never a verl built-in or someone else's estimator."""
    existing = core_algos.ADV_ESTIMATOR_REGISTRY.get(name)
    if existing is not None and existing is not fn:
        if not getattr(existing, "_eqpo_verl_ext", False):
            raise RuntimeError(
                f"verl already has an advantage estimator named {name!r} ({existing!r}); "
                "eqpo.backends.verl cannot register its own under that name"
            )
        del core_algos.ADV_ESTIMATOR_REGISTRY[name]
    core_algos.register_adv_est(name)(fn)


VERL_FUNCTIONS = {name: _make_verl_fn(name) for name in REGISTERED}
for _name, _fn in VERL_FUNCTIONS.items():
    _register(_name, _fn)


# ----------------------------------------------------------------------------------------------
# Launch settings
# ----------------------------------------------------------------------------------------------

_BARE = re.compile(r"[A-Za-z_/][A-Za-z0-9_./\-]*")
_LOOKS_TYPED = re.compile(r"(?i)true|false|null|inf|nan")  # would parse as bool/null/float


def format_value(value: Any) -> str:
    """A Python value in Hydra's override grammar (strings quoted where needed); the one renderer of
    every override this package writes (the launcher's and :func:`verl_overrides`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if isinstance(value, str):
        if _BARE.fullmatch(value) and not _LOOKS_TYPED.fullmatch(value):
            return value
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{format_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} ({type(value).__name__}) as a Hydra override value")


def verl_overrides(
    method: str,
    options: Mapping | None = None,
    cluster_log: str | None = None,
    format_weight: float | None = None,
    reward: Mapping | None = None,
) -> list[str]:
    """Hydra overrides for ``python -m verl.trainer.main_ppo`` that run ``method`` with this extension.

    ``reward``: keyword arguments of :func:`eqpo.backends.verl.reward.compute_score` (``function``,
    ``matching``, ``extraction``; e.g. :meth:`eqpo.runs.settings.ReproductionOptions.reward_kwargs`), rendered as
    ``+reward.custom_reward_function.reward_kwargs.<key>`` (verl 0.9.1 passes that mapping to the
    reward function on every call).

    The process environment must also have ``VERL_USE_EXTERNAL_MODULES=eqpo.backends.verl`` (see
    :data:`EXTERNAL_MODULE`): verl looks the trainer mode up before it imports ``external_lib``.
    """
    if method not in METHOD_TO_VERL:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(METHOD_TO_VERL)}")
    verl_name = METHOD_TO_VERL[method]
    options = dict(options or {})
    if options and verl_name not in REGISTERED:
        raise ValueError(f"method {method!r} runs verl's own {verl_name!r}, which takes no algorithm.eqpo options")
    if verl_name in REGISTERED:
        split_options(REGISTERED[verl_name], options)
    if cluster_log is not None and not str(cluster_log).startswith("/"):
        raise ValueError(f"cluster_log must be an absolute path (the trainer runs in a Ray actor), got {cluster_log!r}")
    out = [
        f"algorithm.adv_estimator={verl_name}",
        f"trainer.v1.trainer_mode={TRAINER_NAME}",
        f"actor_rollout_ref.model.external_lib={EXTERNAL_MODULE}",
        f"reward.custom_reward_function.path={REWARD_PATH}",
        f"reward.custom_reward_function.name={REWARD_NAME}",
    ]
    out += [f"+algorithm.eqpo.{key}={format_value(value)}" for key, value in options.items()]
    if format_weight is not None:
        out.append(f"+reward.custom_reward_function.reward_kwargs.format_weight={format_value(float(format_weight))}")
    from eqpo.core.options import EXTRACTIONS, MATCHINGS, REWARD_FUNCTIONS

    allowed = {"function": REWARD_FUNCTIONS, "matching": MATCHINGS, "extraction": EXTRACTIONS}
    for key, value in (reward or {}).items():
        if key not in allowed:
            raise ValueError(f"unknown reward option {key!r}; valid: {sorted(allowed)}")
        if value not in allowed[key]:
            raise ValueError(f"reward.{key} must be one of {list(allowed[key])}, got {value!r}")
        out.append(f"+reward.custom_reward_function.reward_kwargs.{key}={format_value(value)}")
    if cluster_log is not None:
        out.append(f"+trainer.eqpo_cluster_log={format_value(str(cluster_log))}")
    return out
