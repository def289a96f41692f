"""One GPU, no cluster: EQPO in TRL's ``GRPOTrainer`` (the ``trl`` backend of the workflow).

- :mod:`eqpo.backends.trl.data`: our verl export -> TRL's dataset, the local model and processor, greedy
  answers (plain ``generate``, vLLM when installed) and the predictions table;
- :mod:`eqpo.backends.trl.trainer`: :class:`~eqpo.backends.trl.trainer.EqpoGRPOTrainer`, TRL's trainer with its group
  normalisation replaced by any estimator of :mod:`eqpo.core.advantages`, and the workflow's run driver.

Built against exactly TRL :data:`TRL_VERSION`: the subclass overrides private methods of
``GRPOTrainer`` (``_calculate_rewards``, ``_generate_and_score_completions``, ``_compute_loss``),
so another version is refused rather than silently mis-wired.
"""

from __future__ import annotations

TRL_VERSION = "1.16.0"


def require_trl() -> None:
    """Raise unless TRL :data:`TRL_VERSION` is installed."""
    try:
        import trl
    except ImportError as err:
        raise ImportError(f"the trl backend needs trl=={TRL_VERSION}: pip install 'eqpo[trl]' ({err})") from err
    if trl.__version__ != TRL_VERSION:
        raise ImportError(
            f"the trl backend is built for trl=={TRL_VERSION} (it overrides GRPOTrainer internals), "
            f"found trl {trl.__version__}: pip install 'trl=={TRL_VERSION}'"
        )
