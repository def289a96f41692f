"""The ``eqpo_sync`` v1 trainer: verl 0.9.1's synchronous PPO trainer plus the eqpo data hand-off.

Run with ``trainer.v1.trainer_mode=eqpo_sync`` (and ``VERL_USE_EXTERNAL_MODULES=eqpo.backends.verl`` so
the class is registered in verl's TaskRunner actor before it looks the mode up). It is
``verl.trainer.ppo.v1.PPOTrainerSync`` (what ``get_trainer_cls("sync")`` returns) with:

- ``_compute_advantage``: fetches ``uid``, ``extra_info`` and ``data_source`` of the batch's rows
  from TransferQueue, builds the per-row :class:`~eqpo.backends.verl.estimators.BatchContext` (dataset =
  ``extra_info.dataset`` or ``data_source``; group = ``extra_info.group``, None when missing;
  sample id = ``extra_info.sample_id``; padding rows flagged), sets it around verl's own advantage
  computation, adds ``eqpo/...`` metrics and appends the implicit-cluster assignments to the JSONL
  file ``trainer.eqpo_cluster_log`` (absolute path, ``+trainer.eqpo_cluster_log=/abs/clusters.jsonl``).
- ``_save_checkpoint`` / ``_load_checkpoint``: the estimator state (history statistics, Group-DRO
  weights) is saved as ``eqpo_estimator.json`` in verl's ``{trainer.default_local_dir}/global_step_{N}``
  folder and restored from the folder verl resumes from. On resume, cluster-log rows of steps after
  the checkpoint are dropped (those steps run again).
- ``trainer_mode``: verl's base class branches on ``trainer_mode == "sync"`` (replay buffer,
  dataloader refill, TransferQueue checkpoints); this trainer reports "sync" there, so it behaves
  exactly like the sync trainer.

The pure pieces (rows -> context, padding detection, metrics, cluster-log rows, checkpoint paths)
are module functions usable without Ray or TransferQueue. The class itself needs verl's v1 trainer
(``verl[verl-core]``: TransferQueue); without it this module still imports, ``EqpoSyncTrainer`` is
not defined and :func:`get_trainer_class` raises an ImportError saying what to install.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from eqpo.backends.verl import estimators
from eqpo.backends.verl.estimators import TRAINER_NAME, BatchContext, make_batch_context, normalize_group
from eqpo.runs import jsonl
from eqpo.runs.files import ESTIMATOR_STATE_FILE, cluster_rows, estimator_metrics, missing_estimator_state

logger = logging.getLogger(__name__)

CONTEXT_FIELDS = ["uid", "extra_info", "data_source"]
# Where the agent loop stores each response's reward_extra_info (our reward's item counts).
REWARD_INFO_FIELD = "extra_fields"
CLUSTER_LOG_COLUMNS = ["sample_id", "step", "dataset", "cluster", "k", "true_group"]
PADDING_UID_PREFIX = "pad"

# ----------------------------------------------------------------------------------------------
# Rows -> batch context
# ----------------------------------------------------------------------------------------------


def is_padding_row(uid: Any, tag: Mapping | None = None) -> bool:
    """verl's synthetic padding rows (padding_utils.upsample_batch_to_divisible_size): tag
    ``is_padding`` or a uid "pad<hex>" (real uids are uuid4 strings, which never start with "pad")."""
    if isinstance(tag, Mapping) and tag.get("is_padding", False):
        return True
    return str(uid).startswith(PADDING_UID_PREFIX)


def _stable_id(info: Mapping, uid: Any) -> Any:
    for key in ("sample_id", "index"):
        value = info.get(key)
        if value is not None and not (isinstance(value, float) and math.isnan(value)):
            return value
    return str(uid)


def context_from_rows(
    uids: Sequence, extra_infos: Sequence, data_sources: Sequence | None = None, tags: Sequence | None = None
) -> BatchContext:
    """Per-row batch context from what TransferQueue holds for each row.

    dataset: ``extra_info["dataset"]``, else the row's ``data_source``. group: ``extra_info["group"]``
    (None when missing). sample_id: ``extra_info["sample_id"]``, else ``extra_info["index"]``, else the
    uid. true_group (cluster log only): ``extra_info["true_group"]`` if present, else the group.
    Padding rows (they copy the first sample's extra_info) are flagged, see :func:`is_padding_row`.
    """
    n = len(uids)
    data_sources = [None] * n if data_sources is None else list(data_sources)
    tags = [{}] * n if tags is None else list(tags)
    if not len(extra_infos) == len(data_sources) == len(tags) == n:
        raise ValueError(
            f"rows disagree in length: {n} uids, {len(extra_infos)} extra_info, "
            f"{len(data_sources)} data_source, {len(tags)} tags"
        )
    datasets, groups, true_groups, sample_ids, padding = [], [], [], [], []
    for uid, info, source, tag in zip(uids, extra_infos, data_sources, tags, strict=False):
        info = info if isinstance(info, Mapping) else {}
        datasets.append(info.get("dataset") or source or None)
        groups.append(normalize_group(info.get("group")))
        true_groups.append(normalize_group(info.get("true_group", info.get("group"))))
        sample_ids.append(_stable_id(info, uid))
        padding.append(is_padding_row(uid, tag))
    return make_batch_context(
        datasets, groups, sample_ids, padding, uids=[str(u) for u in uids], true_groups=true_groups
    )


def column_as_list(td: Any, name: str, n: int) -> list:
    """One TransferQueue column as a Python list of n entries ([None] * n when absent).

    Non-tensor columns come back as NonTensorStack (``.tolist()``); ``td[name]`` would give a
    LinkedList, so the column is popped, as verl itself does for ``uid``."""
    if name not in td.keys():
        return [None] * n
    column = td.pop(name)
    if hasattr(column, "tolist"):
        values = column.tolist()
    elif hasattr(column, "data"):  # a NonTensorData shared by every row
        values = column.data
    else:
        values = list(column)
    if not isinstance(values, list):
        values = [values] * n
    if len(values) != n:
        raise ValueError(f"TransferQueue column {name!r} has {len(values)} entries for {n} rows")
    return values


# ----------------------------------------------------------------------------------------------
# Metrics and the cluster log
# ----------------------------------------------------------------------------------------------


def unparsed_item_metrics(extra_fields: Sequence, context: BatchContext) -> dict[str, float]:
    """``eqpo/unparsed_item_share/<dataset>``: the share of the answer items of a step's responses that
    name no label of the dataset (the reward's ``unparsed_items`` / ``items``, summed per dataset over
    the non-padding rows; 0 when a dataset's answers have no item). Rows without the counts are left
    out."""
    sums: dict[str, list[float]] = {}
    for extra, dataset, padding in zip(extra_fields, context.datasets, context.is_padding, strict=False):
        info = extra.get("reward_extra_info") if isinstance(extra, Mapping) else None
        if padding or not isinstance(info, Mapping) or info.get("items") is None:
            continue
        total = sums.setdefault(str(dataset), [0.0, 0.0])
        total[0] += float(info.get("unparsed_items") or 0.0)
        total[1] += float(info["items"])
    return {f"eqpo/unparsed_item_share/{d}": (u / t if t else 0.0) for d, (u, t) in sorted(sums.items())}


def advantage_metrics(adv_time_s: float, stats: Mapping, context: BatchContext | None = None) -> dict[str, float]:
    """Scalar metrics for verl's logger: eqpo/adv_time_s (the whole advantage step),
    eqpo/estimator_time_s, eqpo/padding_rows and the estimator's :func:`eqpo.runs.files.estimator_metrics`."""
    out = {"eqpo/adv_time_s": float(adv_time_s)}
    if context is not None:
        out["eqpo/padding_rows"] = float(context.n_padding)
    if "time_s" in stats:
        out["eqpo/estimator_time_s"] = float(stats["time_s"])
    if "estimator" in stats:
        out.update(estimator_metrics(stats["estimator"]))
    return out


def cluster_log_rows(stats: Mapping, context: BatchContext, step: int) -> list[dict]:
    """The cluster-log rows (:func:`eqpo.runs.files.cluster_rows`) of the last call: one per clustered
    sample id (first row of that sample in the batch, padding excluded), with its true group."""
    true_groups = context.true_groups or context.groups
    prompts = [
        (sid, sid, dataset, group)
        for sid, dataset, group, pad in zip(
            context.sample_ids, context.datasets, true_groups, context.is_padding, strict=False
        )
        if not pad
    ]
    return cluster_rows(stats["estimator"], step, prompts) if "estimator" in stats else []


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def append_jsonl(path: str, rows: Sequence[Mapping]) -> None:
    """Append rows to a JSONL file (parent folders created)."""
    jsonl.append(path, rows, default=_json_default)


def truncate_jsonl_after(path: str, step: int) -> int:
    """Drop rows with ``step`` > step (they are recomputed after a resume) and a cut-off last line;
    returns the lines dropped."""
    return jsonl.truncate_after(path, step)


def cluster_log_path(trainer_config: Any) -> str | None:
    """``trainer.eqpo_cluster_log`` (None when unset); must be absolute, because the trainer runs in a
    Ray actor whose working directory is not the launcher's business."""
    path = trainer_config.get("eqpo_cluster_log", None) if hasattr(trainer_config, "get") else None
    if path in (None, ""):
        return None
    path = str(path)
    if not os.path.isabs(path):
        raise ValueError(f"trainer.eqpo_cluster_log must be an absolute path, got {path!r}")
    return path


# ----------------------------------------------------------------------------------------------
# Checkpoints
# ----------------------------------------------------------------------------------------------


def global_step_folder(default_local_dir: str, step: int) -> str:
    """verl's checkpoint folder of a step: ``{trainer.default_local_dir}/global_step_{step}``
    (PPOTrainer._save_checkpoint)."""
    return os.path.join(str(default_local_dir), f"global_step_{int(step)}")


def estimator_state_path(step_folder: str) -> str:
    return os.path.join(str(step_folder), ESTIMATOR_STATE_FILE)


def resume_folder(trainer_config: Any, cwd: str | None = None) -> str | None:
    """The folder verl's PPOTrainer._load_checkpoint resumes from (None: from scratch).

    resume_mode disable -> None; auto -> latest_checkpointed_iteration.txt under default_local_dir
    (relative to cwd); resume_path -> resume_from_path (relative to cwd)."""
    from verl.utils.checkpoint.checkpoint_manager import find_latest_ckpt_path

    cwd = cwd or os.getcwd()
    mode = trainer_config.resume_mode
    if mode == "disable":
        return None
    if mode == "auto":
        folder = str(trainer_config.default_local_dir)
        return find_latest_ckpt_path(folder if os.path.isabs(folder) else os.path.join(cwd, folder))
    if mode == "resume_path":
        folder = str(trainer_config.resume_from_path)
        return folder if os.path.isabs(folder) else os.path.join(cwd, folder)
    raise ValueError(f"unknown trainer.resume_mode {mode!r}")


def save_estimator_checkpoint(step_folder: str, state: Mapping | None = None) -> str:
    """Write the estimator state (default: this process's) atomically into the step folder."""
    state = estimators.estimator_state() if state is None else state
    os.makedirs(step_folder, exist_ok=True)
    path = estimator_state_path(step_folder)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(state, f, default=_json_default)
    os.replace(tmp, path)
    return path


def load_estimator_checkpoint(step_folder: str) -> bool:
    """Load ``eqpo_estimator.json`` from the step folder into this process; False when absent."""
    path = estimator_state_path(step_folder)
    if not os.path.exists(path):
        return False
    with open(path, encoding="utf-8") as f:
        estimators.load_estimator_state(json.load(f))
    return True


def restart_estimator_or_stop(folder: str, trainer_config: Any) -> None:
    """Resuming from ``folder``, which has no ``eqpo_estimator.json``: stop, because EQPO's history
    statistics and Group-DRO's weights would silently restart from nothing, unless
    ``trainer.eqpo_restart_estimator`` (``train.restart_estimator_on_resume``) asks for exactly that."""
    allowed = trainer_config.get("eqpo_restart_estimator", False) if hasattr(trainer_config, "get") else False
    if allowed:
        logger.warning(
            "resuming from %s without %s: the estimators start afresh (train.restart_estimator_on_resume)",
            folder,
            ESTIMATOR_STATE_FILE,
        )
        return
    raise missing_estimator_state(folder, "the eqpo_sync trainer")


def base_trainer_mode(mode: str) -> str:
    """The mode verl's base-class branches should see: this trainer is the sync trainer."""
    return "sync" if mode == TRAINER_NAME else mode


# ----------------------------------------------------------------------------------------------
# The trainer class (needs verl's v1 trainer and TransferQueue)
# ----------------------------------------------------------------------------------------------

try:
    import transfer_queue as tq
    from verl.trainer.ppo.v1 import PPOTrainerSync
    from verl.trainer.ppo.v1.trainer_base import TRAINER_REGISTRY, register_trainer
except ImportError as err:  # verl without the verl-core extra
    TRAINER_IMPORT_ERROR: ImportError | None = err
else:
    TRAINER_IMPORT_ERROR = None

_MISSING_TRAINER = (
    "the eqpo_sync trainer needs verl's v1 trainer with TransferQueue ({err}); install "
    "'verl[verl-core]==0.9.1'. The advantage estimators (eqpo.backends.verl.estimators) work without it, "
    "but datasets and groups then reach them only through set_batch_context."
)


def get_trainer_class() -> type:
    """The registered trainer class, or an ImportError that says what is missing."""
    if TRAINER_IMPORT_ERROR is not None:
        raise ImportError(_MISSING_TRAINER.format(err=TRAINER_IMPORT_ERROR)) from TRAINER_IMPORT_ERROR
    return EqpoSyncTrainer


if TRAINER_IMPORT_ERROR is None:

    class EqpoSyncTrainer(PPOTrainerSync):
        """verl's sync PPO trainer that hands each row's dataset, group and sample id to the eqpo
        estimators, logs their statistics and checkpoints their state (see the module docstring)."""

        def __init__(self, config):
            self.eqpo_cluster_log = cluster_log_path(config.trainer)
            super().__init__(config)

        @property
        def trainer_mode(self) -> str:
            return self.__dict__.get("_eqpo_trainer_mode", "sync")

        @trainer_mode.setter
        def trainer_mode(self, value: str) -> None:
            self.__dict__["_eqpo_trainer_mode"] = base_trainer_mode(value)

        def _fetch_context(self, batch) -> BatchContext:
            td = tq.kv_batch_get(keys=batch.keys, partition_id=batch.partition_id, select_fields=CONTEXT_FIELDS)
            n = len(batch.keys)
            return context_from_rows(
                column_as_list(td, "uid", n),
                column_as_list(td, "extra_info", n),
                column_as_list(td, "data_source", n),
                batch.tags,
            )

        def _reward_item_metrics(self, batch, context: BatchContext) -> dict[str, float]:
            """The step's unparsed-item shares; nothing (and one warning) when the rows carry no
            reward extra info, so a logging gap never stops training."""
            try:
                td = tq.kv_batch_get(
                    keys=batch.keys, partition_id=batch.partition_id, select_fields=[REWARD_INFO_FIELD]
                )
                return unparsed_item_metrics(column_as_list(td, REWARD_INFO_FIELD, len(batch.keys)), context)
            except Exception as err:  # a missing field must not end the run
                if not getattr(self, "_eqpo_warned_items", False):
                    logger.warning(
                        "no reward item counts in TransferQueue field %r (%s): the unparsed-item share "
                        "is not logged during training",
                        REWARD_INFO_FIELD,
                        err,
                    )
                    self._eqpo_warned_items = True
                return {}

        def _compute_advantage(self, batch, metrics: dict):
            context = self._fetch_context(batch)
            metrics.update(self._reward_item_metrics(batch, context))
            estimators.clear_last_stats()
            start = time.perf_counter()
            with estimators.batch_context(context):
                batch = super()._compute_advantage(batch, metrics)
            elapsed = time.perf_counter() - start
            stats = estimators.last_advantage_stats()
            metrics.update(advantage_metrics(elapsed, stats, context))
            if self.eqpo_cluster_log and "estimator" in stats and stats["estimator"].clusters:
                append_jsonl(self.eqpo_cluster_log, cluster_log_rows(stats, context, self.global_steps))
            return batch

        def _save_checkpoint(self):
            # Written before verl's tracker file, so a checkpoint verl resumes from always has it.
            save_estimator_checkpoint(global_step_folder(self.config.trainer.default_local_dir, self.global_steps))
            super()._save_checkpoint()

        def _load_checkpoint(self):
            super()._load_checkpoint()
            if self.global_steps > 0:
                folder = resume_folder(self.config.trainer)
                if folder is not None and not load_estimator_checkpoint(folder):
                    restart_estimator_or_stop(folder, self.config.trainer)
            if self.eqpo_cluster_log:
                truncate_jsonl_after(self.eqpo_cluster_log, self.global_steps)

    _existing = TRAINER_REGISTRY.get(TRAINER_NAME)
    if _existing is not None and _existing is not EqpoSyncTrainer and _existing.__qualname__ == "EqpoSyncTrainer":
        del TRAINER_REGISTRY[TRAINER_NAME]  # an earlier copy of this module (reload)
    register_trainer(TRAINER_NAME)(EqpoSyncTrainer)
