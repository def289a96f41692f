"""A recorder loaded into every process of the verl loop tests (``VERL_USE_EXTERNAL_MODULES``, after
``eqpo.backends.verl``); it only records, and writes JSON lines under ``$EQPO_LOOP_PROBE_DIR``, each with
the ``$EQPO_LOOP_ATTEMPT`` it belongs to:

- ``advantages.<pid>.jsonl`` (verl's TaskRunner): one line per call of a registered eqpo estimator
  by verl's ``compute_advantage``: the trainer's step, the rows as verl handed them (outcome reward,
  uid, response tokens) with our batch context (dataset, group, sample id, padding), and the
  per-row advantages the estimator returned. With ``$EQPO_LOOP_SHADOWS`` (comma-separated verl
  estimator names) the same rows also go through those estimators' registered verl functions, each
  with its own estimator state (saved in, and restored from, the run's checkpoints like the run's
  own), and their advantages are recorded beside (they never reach the loss).
- ``loss.<pid>.jsonl`` (the FSDP workers): one line per call of verl's policy loss: the worker's rank
  and, per row with response tokens, the advantage the loss received (its mean over the row's tokens;
  outcome advantages are constant over a row) and the number of tokens.
- ``images.<pid>.jsonl``: the number of images our CPU dataset class opened for each prompt.
- ``saved.<pid>.jsonl``: the steps whose checkpoint (with the estimator state) was written.
- ``hung.<pid>.jsonl``: with ``$EQPO_LOOP_HANG_AT_STEP=N`` the trainer waits in step N after its
  rollouts and rewards, before its advantages, so that a test can kill the run mid-step.
"""

from __future__ import annotations

import json
import os
import time

import torch

DIR = os.environ.get("EQPO_LOOP_PROBE_DIR")
SHADOWS = [name for name in os.environ.get("EQPO_LOOP_SHADOWS", "").split(",") if name]
HANG_AT = int(os.environ.get("EQPO_LOOP_HANG_AT_STEP", "0") or 0)
_STEP = {"step": None}


def _write(kind: str, record: dict) -> None:
    record = {"attempt": int(os.environ.get("EQPO_LOOP_ATTEMPT", "0") or 0), **record}
    with open(os.path.join(DIR, f"{kind}.{os.getpid()}.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def _per_row(advantages: torch.Tensor, mask: torch.Tensor) -> tuple[list[float], list[int]]:
    mask = mask.to(advantages.dtype)
    tokens = mask.sum(-1)
    return ((advantages * mask).sum(-1) / tokens.clamp(min=1)).tolist(), tokens.long().tolist()


def _wrap_estimators() -> None:
    from verl.trainer.ppo import core_algos

    from eqpo.backends.verl import estimators

    own = dict(estimators.VERL_FUNCTIONS)

    def wrap(name, real):
        def recorded(token_level_rewards, response_mask, index=None, config=None, **kwargs):
            context = estimators.current_batch_context()
            shadows = {}
            for shadow in SHADOWS:
                if shadow != name:
                    adv, _ = own[shadow](token_level_rewards, response_mask, index=index, config=None)
                    shadows[shadow] = _per_row(adv, response_mask)[0]
            adv, returns = real(token_level_rewards, response_mask, index=index, config=config, **kwargs)
            per_row, tokens = _per_row(adv, response_mask)
            _write(
                "advantages",
                {
                    "step": _STEP["step"],
                    "estimator": name,
                    "rewards": token_level_rewards.sum(-1).tolist(),
                    "uids": [str(u) for u in index],
                    "tokens": tokens,
                    "advantages": per_row,
                    "shadows": shadows,
                    "datasets": list(context.datasets),
                    "groups": list(context.groups),
                    "sample_ids": [str(s) for s in context.sample_ids],
                    "is_padding": list(context.is_padding),
                },
            )
            return adv, returns

        recorded._eqpo_verl_ext = True
        return recorded

    for name, real in own.items():
        core_algos.ADV_ESTIMATOR_REGISTRY[name] = wrap(name, real)


def _wrap_trainer() -> None:
    from eqpo.backends.verl.trainer import get_trainer_class

    trainer = get_trainer_class()
    compute, save = trainer._compute_advantage, trainer._save_checkpoint

    def compute_advantage(self, batch, metrics):
        _STEP["step"] = int(self.global_steps)
        if HANG_AT and _STEP["step"] == HANG_AT:
            _write("hung", {"step": _STEP["step"]})
            time.sleep(3600)  # the test kills the run here: the step's rollouts are done, its update is not
        return compute(self, batch, metrics)

    def save_checkpoint(self):
        save(self)
        _write("saved", {"step": int(self.global_steps)})

    trainer._compute_advantage, trainer._save_checkpoint = compute_advantage, save_checkpoint


def _wrap_policy_loss() -> None:
    from verl.trainer.ppo import core_algos

    real = core_algos.POLICY_LOSS_REGISTRY["vanilla"]

    def recorded(
        old_log_prob,
        log_prob,
        advantages,
        response_mask,
        loss_agg_mode="token-mean",
        config=None,
        rollout_is_weights=None,
    ):
        per_row, tokens = _per_row(advantages.detach(), response_mask)
        _write(
            "loss",
            {
                "rank": int(os.environ.get("RANK", "0")),
                "advantages": [a for a, n in zip(per_row, tokens, strict=False) if n > 0],
                "tokens": [n for n in tokens if n > 0],
            },
        )
        return real(
            old_log_prob=old_log_prob,
            log_prob=log_prob,
            advantages=advantages,
            response_mask=response_mask,
            loss_agg_mode=loss_agg_mode,
            config=config,
            rollout_is_weights=rollout_is_weights,
        )

    core_algos.POLICY_LOSS_REGISTRY["vanilla"] = recorded


def _wrap_images() -> None:
    from eqpo.backends.verl.cpu_dataset import PilImageDataset

    real = PilImageDataset.__dict__["_process_multi_modal_info"].__func__

    def recorded(cls, messages, image_patch_size, config):
        images, videos, audios = real(cls, messages, image_patch_size, config)
        _write("images", {"images": len(images or [])})
        return images, videos, audios

    PilImageDataset._process_multi_modal_info = classmethod(recorded)


if DIR:
    _wrap_images()
    _wrap_estimators()
    _wrap_trainer()
    _wrap_policy_loss()
