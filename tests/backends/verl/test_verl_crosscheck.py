"""Our grpo, rloo and reinforce_pp agree with verl 0.9.1's own estimators on the same batches."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from verl.trainer.config import AlgoConfig
from verl.trainer.ppo import core_algos

from eqpo.core.advantages import make_estimator


@st.composite
def batches(draw):
    sizes = draw(st.lists(st.integers(1, 6), min_size=1, max_size=8))
    binary = draw(st.booleans())
    rewards = []
    for size in sizes:
        if binary:
            rewards += draw(st.lists(st.sampled_from([0.0, 1.0]), min_size=size, max_size=size))
        else:
            rewards += draw(st.lists(st.floats(0, 1, width=32), min_size=size, max_size=size))
    index = np.repeat([f"uid-{i}" for i in range(len(sizes))], sizes)
    perm = np.random.default_rng(draw(st.integers(0, 2**16))).permutation(len(rewards))
    return np.asarray(rewards, dtype=np.float64)[perm], index[perm]


def verl_advantages(name, rewards, index, length=1):
    """verl's estimator on token-level rewards with the outcome score on the last token."""
    token_rewards = torch.zeros(len(rewards), length, dtype=torch.float64)
    token_rewards[:, -1] = torch.as_tensor(rewards)
    mask = torch.ones(len(rewards), length, dtype=torch.float64)
    fn = core_algos.get_adv_estimator_fn(name)
    adv, _ = fn(token_level_rewards=token_rewards, response_mask=mask, index=index, config=AlgoConfig())
    return adv[:, 0].numpy()


def ours(method, rewards, index):
    n = len(rewards)
    return make_estimator(method)(rewards, index, ["A"] * n, [None] * n)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_grpo_matches_verl(batch):
    rewards, index = batch
    np.testing.assert_allclose(ours("grpo", rewards, index), verl_advantages("grpo", rewards, index, 3), atol=1e-8)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_rloo_matches_verl(batch):
    rewards, index = batch
    np.testing.assert_allclose(ours("rloo", rewards, index), verl_advantages("rloo", rewards, index, 3), atol=1e-8)


@settings(max_examples=60, deadline=None)
@given(batches())
def test_reinforce_pp_matches_verl(batch):
    rewards, index = batch
    if len(rewards) < 2:  # verl raises on a one-token batch; ours returns 0 (tested elsewhere)
        return
    # verl's masked_mean divides by (count + 1e-8): its mean is low by mean * 1e-8 / count, which
    # rsqrt(var + 1e-8) can amplify by up to 1e4 when all rewards are equal -> at most 1e-4 apart.
    np.testing.assert_allclose(
        ours("reinforce_pp", rewards, index), verl_advantages("reinforce_plus_plus", rewards, index), atol=1e-4
    )


def test_the_harness_reads_verls_grpo_as_worked_by_hand():
    """Prompt a [1, 0, 1, 1]: mean 0.75, unbiased std 0.5 -> (0.25 or -0.75) / (0.5 + 1e-6); prompt b the mirror."""
    rewards = np.array([1, 0, 1, 1, 0, 0, 1, 0], dtype=float)
    index = np.array(["a"] * 4 + ["b"] * 4)
    expected = np.array([1, -3, 1, 1, -1, -1, 3, -1]) * 0.25 / (0.5 + 1e-6)
    np.testing.assert_allclose(verl_advantages("grpo", rewards, index), expected, rtol=1e-6)
