"""verl 0.9.1 extension: eqpo's estimators, the ``eqpo_sync`` trainer and the reward function.

Importing this package registers, in the importing process:

- the advantage estimators verl lacks (:data:`REGISTERED`, read from :mod:`eqpo.core.methods`) in
  verl's registry (:mod:`eqpo.backends.verl.estimators`; :data:`METHOD_TO_VERL` maps every project
  method to its verl ``algorithm.adv_estimator``);
- the MedGemma (Gemma3) support patch (:mod:`eqpo.backends.verl.gemma3`; :data:`GEMMA3_OVERRIDES` are
  the Hydra overrides a MedGemma run adds);
- the v1 trainer ``eqpo_sync`` (:mod:`eqpo.backends.verl.trainer`), which hands each row's dataset,
  group and sample id to those estimators, logs their statistics and checkpoints their state. It
  needs TransferQueue (``verl[verl-core]``); without it the import still succeeds, with a warning,
  and only the estimators are registered.

verl computes advantages in its TaskRunner Ray actor, so registration must happen there: launch with
``VERL_USE_EXTERNAL_MODULES=eqpo.backends.verl`` in the environment (``import verl`` then imports this
package in every process). ``actor_rollout_ref.model.external_lib=eqpo.backends.verl`` also imports it,
but only when the model config is built, after verl has looked up ``trainer.v1.trainer_mode``.
:func:`verl_overrides` lists the Hydra overrides for a method. The reward function is
``reward.custom_reward_function.path=pkg://eqpo.backends.verl.reward`` (:mod:`eqpo.backends.verl.reward`).
"""

from __future__ import annotations

import importlib
import os
import sys
import warnings

_EXTERNAL_MODULES = "VERL_USE_EXTERNAL_MODULES"


def _import_verl_before_later_modules() -> list[str]:
    """When this package is imported before verl in a process (a Ray worker unpickling one of our classes),
    ``import verl`` below would import the modules that VERL_USE_EXTERNAL_MODULES lists after this one while
    this one is half done (before the CPU platform exists). Import verl without them; returns them, to be
    imported at the end, so that they load after this package as the variable's order says."""
    if "verl" in sys.modules:
        return []
    names = [name for name in os.environ.get(_EXTERNAL_MODULES, "").split(",") if name]
    later = names[names.index(__name__) + 1 :] if __name__ in names else []
    if later:
        os.environ[_EXTERNAL_MODULES] = ",".join(names[: len(names) - len(later)])
        try:
            import verl  # noqa: F401
        finally:
            os.environ[_EXTERNAL_MODULES] = ",".join(names)
    return later


_LATER_MODULES = _import_verl_before_later_modules()

# First the CPU platform (VERL_PLATFORM=cpu only): verl's trainer modules ask for the platform when imported.
from eqpo.backends.verl import compat, cpu  # noqa: E402

cpu.register()
compat.apply()  # verl 0.9.1 beside TRL 1.16 (see eqpo.backends.verl.compat)

# MedGemma (Gemma3Processor) support; a no-op for other models' processors (see eqpo.backends.verl.gemma3). Before
# the trainer import below: that imports verl's agent-loop worker, whose @ray.remote decoration copies the
# methods the patch replaces, so patching afterwards would never reach the agent-loop processes.
from eqpo.backends.verl.gemma3 import GEMMA3_OVERRIDES, patch_verl_for_gemma3  # noqa: E402

patch_verl_for_gemma3()

from eqpo.backends.verl import estimators, trainer  # noqa: E402,F401  (importing them registers the estimators and the trainer)
from eqpo.backends.verl.estimators import (  # noqa: E402
    DATA_DIR_ENV,
    EXTERNAL_MODULE,
    METHOD_TO_VERL,
    REGISTERED,
    REWARD_NAME,
    REWARD_PATH,
    TRAINER_NAME,
    BatchContext,
    MissingBatchContextError,
    batch_context,
    clear_batch_context,
    estimator_state,
    last_advantage_stats,
    load_estimator_state,
    set_batch_context,
    verl_overrides,
)
from eqpo.backends.verl.reward import compute_score  # noqa: E402
from eqpo.backends.verl.trainer import TRAINER_IMPORT_ERROR, get_trainer_class  # noqa: E402

# Your own datasets (data.custom): the launcher names the run's export directory, so that the reward
# parses their labels in every verl process (the cohort's spec sidecar lies beside the export).
if os.environ.get(DATA_DIR_ENV):
    from eqpo.backends.verl.logs import register_custom_specs

    register_custom_specs(os.environ[DATA_DIR_ENV])

for _name in _LATER_MODULES:
    importlib.import_module(_name)

if TRAINER_IMPORT_ERROR is not None:
    warnings.warn(
        f"eqpo.backends.verl: the {TRAINER_NAME!r} trainer is not registered ({TRAINER_IMPORT_ERROR}); "
        "install 'verl[verl-core]==0.9.1'. The advantage estimators are registered.",
        stacklevel=2,
    )


def __getattr__(name: str):
    if name == "EqpoSyncTrainer":
        return get_trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "EXTERNAL_MODULE",
    "GEMMA3_OVERRIDES",
    "METHOD_TO_VERL",
    "REGISTERED",
    "REWARD_NAME",
    "REWARD_PATH",
    "TRAINER_NAME",
    "BatchContext",
    "MissingBatchContextError",
    "batch_context",
    "clear_batch_context",
    "compute_score",
    "estimator_state",
    "get_trainer_class",
    "last_advantage_stats",
    "load_estimator_state",
    "set_batch_context",
    "verl_overrides",
]
