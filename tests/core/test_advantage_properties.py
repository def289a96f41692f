"""Property tests: for any well-formed input every estimator returns finite advantages that rank a
prompt's rollouts as their rewards do, and zero where no rollout is better than another."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqpo.core.advantages import ESTIMATORS, make_estimator

DATASETS = ["CheXpert", "HAM10000", "VinDr-Mammo", "", None]
GROUPS = ["F|a1", "M|a3", "a2", None, "UNK", ""]


@st.composite
def batch(draw, step=0):
    n_prompts = draw(st.integers(0, 10))
    reward = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0, 1), st.just(0.0))
    rewards, pids, datasets, groups = [], [], [], []
    for p in range(n_prompts):
        size = draw(st.integers(1, 5))
        d, g = draw(st.sampled_from(DATASETS)), draw(st.sampled_from(GROUPS))
        rewards += draw(st.lists(reward, min_size=size, max_size=size))
        pids += [f"{step}-{p}"] * size
        datasets += [d] * size
        groups += [g] * size
    n_pad = draw(st.integers(0, 2))
    rewards += [0.0] * n_pad
    pids += [None] * n_pad
    datasets += ["CheXpert"] * n_pad
    groups += [None] * n_pad
    return rewards, pids, datasets, groups


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(sorted(ESTIMATORS)), st.sampled_from(["history", "batch"]), st.data())
def test_finite_over_a_sequence_of_batches(method, scope, data):
    options = {"scope": scope} if method in ("eqpo", "eqpo_nd", "drpo") else {}
    est = make_estimator(method, **options)
    for step in range(3):
        rewards, pids, datasets, groups = data.draw(batch(step))
        adv = est(rewards, pids, datasets, groups)
        assert adv.shape == (len(rewards),)
        assert np.all(np.isfinite(adv))
        assert np.all(adv[[p is None for p in pids]] == 0)
        assert_ranked_by_reward(np.asarray(rewards), pids, adv)


def assert_ranked_by_reward(rewards: np.ndarray, pids: list, adv: np.ndarray) -> None:
    """Within each prompt a clearly higher reward gets a higher advantage and equal rewards equal ones:
    every estimator here scales a prompt's centred rewards by one positive number (a baseline,
    GRPO's std, EQPO's factors, Group DRO's weight) or whitens the whole batch."""
    for pid in {p for p in pids if p is not None}:
        rows = np.flatnonzero([p == pid for p in pids])
        r, a = rewards[rows], adv[rows]
        for i in range(len(rows)):
            for j in range(len(rows)):
                if r[i] > r[j] + 1e-6:
                    assert a[i] > a[j], (pid, r, a)
                elif r[i] == r[j]:
                    assert a[i] == pytest.approx(a[j], abs=1e-9), (pid, r, a)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(sorted(ESTIMATORS)), st.integers(1, 6), st.integers(1, 6), st.sampled_from([0.0, 1.0, 0.5]))
def test_all_equal_rewards_give_zero_advantage(method, n_prompts, n_rollouts, value):
    # With one shared reward no response is better than another; only estimators without a
    # per-prompt baseline on single rollouts (grpo family with n = 1) keep the raw reward.
    est = make_estimator(method)
    size = n_prompts * n_rollouts
    adv = est([value] * size, np.repeat(np.arange(n_prompts), n_rollouts), ["A"] * size, ["F"] * size)
    assert np.all(np.isfinite(adv))
    if n_rollouts > 1 or method == "reinforce_pp":
        np.testing.assert_allclose(adv, 0.0, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(st.sampled_from(["eqpo", "eqpo_nd", "drpo"]), st.integers(0, 2**16))
def test_zero_reward_datasets_and_groups_stay_finite(method, seed):
    rng = np.random.default_rng(seed)
    rewards = np.concatenate([np.zeros(20), rng.integers(0, 2, 20)]).astype(float)
    pids = np.repeat(np.arange(8), 5)
    datasets = np.repeat(["dead", "dead", "dead", "dead", "live", "live", "live", "live"], 5)
    groups = np.repeat(["F", "M", None, None, "F", "M", None, None], 5)
    est = make_estimator(method)
    for _ in range(3):
        adv = est(rewards, pids, datasets, groups)
        assert np.all(np.isfinite(adv))
        assert np.all(adv[:20] == 0)  # no variation within the all-zero prompts


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**16))
def test_eqpo_scales_advantages_to_unit_batch_std(seed):
    rng = np.random.default_rng(seed)
    rewards = rng.integers(0, 2, 60).astype(float)
    pids = np.repeat(np.arange(12), 5)
    groups = np.repeat(rng.choice(["F", "M", None], 12), 5)
    adv = make_estimator("eqpo", scope="batch")(rewards, pids, ["A"] * 60, groups)
    if np.any(adv != 0):
        assert abs(np.std(adv, ddof=1) - 1) < 1e-3
