"""Advantage estimators: hand-computed cases, state, errors and invariants."""

import json
import math

import numpy as np
import pytest

from eqpo.core.advantages import ESTIMATORS, estimator_options, make_estimator
from eqpo.core.methods import get_method


def run(method, rewards, pids, datasets=None, groups=None, **options):
    n = len(rewards)
    est = make_estimator(method, **options)
    out = est(rewards, pids, datasets or ["A"] * n, groups or [None] * n)
    return est, out


def test_grpo_and_rloo_hand_computed():
    rewards = [1, 0, 1, 1, 0, 0, 1, 0]
    pids = [0, 0, 0, 0, 1, 1, 1, 1]
    # prompt 0: mean 0.75, unbiased std 0.5 -> (1-.75)/.5 = 0.5, (0-.75)/.5 = -1.5
    _, grpo = run("grpo", rewards, pids)
    np.testing.assert_allclose(grpo, [0.5, -1.5, 0.5, 0.5, -0.5, -0.5, 1.5, -0.5], atol=1e-5)
    # RLOO: r - mean(others): 1 - 2/3 = 1/3, 0 - 1 = -1
    _, rloo = run("rloo", rewards, pids)
    np.testing.assert_allclose(rloo, [1 / 3, -1, 1 / 3, 1 / 3, -1 / 3, -1 / 3, 1, -1 / 3], atol=1e-12)


def test_grpo_single_rollout_uses_mean0_std1():
    _, adv = run("grpo", [0.7, 1.0, 0.0], ["a", "b", "b"])
    np.testing.assert_allclose(adv[0], 0.7 / (1 + 1e-6))


def test_reinforce_pp_whitens_over_batch_hand_computed():
    # r = [1, 0, 0, 0.5]: batch mean 0.375, deviations .625 -.375 -.375 .125, squares sum 0.6875,
    # unbiased variance 0.6875 / 3 = 0.2291667, sqrt(0.2291667 + 1e-8) = 0.4787136.
    # No per-prompt baseline: prompt 1's rollouts [0, 0.5] keep different signs.
    expected = [0.625 / 0.4787136, -0.375 / 0.4787136, -0.375 / 0.4787136, 0.125 / 0.4787136]
    _, adv = run("reinforce_pp", [1.0, 0.0, 0.0, 0.5], [0, 0, 1, 1])
    np.testing.assert_allclose(adv, expected, rtol=1e-6)
    _, regrouped = run("reinforce_pp", [1.0, 0.0, 0.0, 0.5], [0, 1, 2, 3])
    np.testing.assert_allclose(regrouped, adv, rtol=1e-12)  # the prompts do not enter


def test_eqpo_batch_scope_hand_computed():
    # Dataset A: p1 (F) [1,0], p2 (F) [1,1], p3 (M) [1,0].
    # grpo: p1, p3 -> +-0.5/std(.7071) = +-0.70711 ; p2 -> 0.
    # T_A = sqrt(3) * 4/6 = 1.15470 ; T_F = sqrt(2) * 3/4 = 1.06066 ; T_M = sqrt(1) * 1/2 = 0.5
    # s'(p1) = +-0.70711 / (1.15470 * 1.06066) = +-0.57735 ; s'(p3) = +-0.70711 / 0.57735 = +-1.22474
    # batch std (ddof 1) of [.57735, -.57735, 0, 0, 1.22474, -1.22474] = sqrt(3.66667 / 5) = 0.85635
    est, adv = run(
        "eqpo",
        [1, 0, 1, 1, 1, 0],
        ["p1", "p1", "p2", "p2", "p3", "p3"],
        groups=["F", "F", "F", "F", "M", "M"],
        scope="batch",
    )
    s_prime = np.array([0.57735, -0.57735, 0, 0, 1.22474, -1.22474])
    np.testing.assert_allclose(adv, s_prime / 0.85635, rtol=1e-4)
    assert est.last_clusters == {}
    stats = {row["group"]: row for row in est.last_group_stats}
    assert stats["F"]["N"] == 2 and stats["F"]["rbar"] == pytest.approx(0.75)
    assert stats["M"]["N"] == 1 and stats["M"]["N_domain"] == 3


def test_eqpo_implicit_groups_hand_computed():
    # Four unlabeled prompts, two distinct reward vectors -> k_cap = 2 -> two clusters of 2 prompts.
    # cluster X = {a, b} [1,1,0] centroid mean 2/3; cluster Y = {c, d} [0,0,1] centroid mean 1/3.
    # Domain: N = 4, rbar = 6/12 = 0.5 -> T_d = 1.  T_X = sqrt2 * 2/3, T_Y = sqrt2 * 1/3.
    rewards = [1, 1, 0] * 2 + [0, 0, 1] * 2
    pids = sum(([p] * 3 for p in "abcd"), [])
    est, adv = run("eqpo", rewards, pids, scope="batch")
    assert est.last_k == {"A": 2}
    clusters = est.last_clusters
    assert clusters["a"] == clusters["b"] != clusters["c"] == clusters["d"]
    probe = est.assign_clusters("A", np.array([[1, 1, 0], [0, 0, 1], [1, 1, 1]], dtype=float))
    assert probe[0] == clusters["a"] and probe[1] == clusters["c"] and probe[2] == clusters["a"]
    assert list(est.assign_clusters("B", np.ones((2, 3)))) == [-1, -1]
    g = np.array([0.57735, 0.57735, -1.1547])  # grpo of [1,1,0]
    s_prime = np.concatenate([g / (math.sqrt(2) * 2 / 3)] * 2 + [-g / (math.sqrt(2) / 3)] * 2)
    np.testing.assert_allclose(adv, s_prime / (s_prime.std(ddof=1) + 1e-6), rtol=1e-4)


def test_eqpo_nd_ignores_demographics_and_drpo_matches_it_without_clamps():
    rng = np.random.default_rng(0)
    rewards = rng.integers(0, 2, 40).astype(float)
    pids = np.repeat(np.arange(8), 5)
    groups = np.repeat(["F|a1", "M|a2"] * 4, 5)
    _, with_groups = run("eqpo_nd", rewards, pids, groups=list(groups), scope="batch")
    _, without = run("eqpo_nd", rewards, pids, scope="batch")
    np.testing.assert_allclose(with_groups, without)
    _, drpo = run("drpo", rewards, pids, scope="batch")
    # no cluster has mean reward 0 here unless all its rewards are 0 (then grpo is 0 as well)
    np.testing.assert_allclose(drpo, without, atol=1e-9)


def test_history_accumulates_and_window_one_equals_batch_scope():
    rng = np.random.default_rng(1)
    batch_est = make_estimator("eqpo", scope="batch")
    win_est = make_estimator("eqpo", scope="history", window=1)
    hist_est = make_estimator("eqpo", scope="history")
    differs = False
    for step in range(6):
        rewards = rng.integers(0, 2, 60).astype(float)
        pids = np.repeat([f"{step}-{i}" for i in range(12)], 5)
        datasets = np.repeat(["A", "B", "A", "B"] * 3, 5)
        groups = np.repeat(["F", None, "M", None] * 3, 5)
        a = batch_est(rewards, pids, datasets, groups)
        b = win_est(rewards, pids, datasets, groups)
        c = hist_est(rewards, pids, datasets, groups)
        np.testing.assert_allclose(a, b, atol=1e-12)
        differs |= not np.allclose(a, c)
    assert differs, "history scope should differ from batch scope once statistics accumulate"
    assert hist_est.history.domain["A"][0] == 6 * 6  # prompts of A over 6 steps


def test_history_cost_is_bounded_by_distinct_vectors():
    est = make_estimator("eqpo_nd")
    rng = np.random.default_rng(2)
    for step in range(50):
        est(rng.integers(0, 2, 100), np.repeat(np.arange(20) + 100 * step, 5), ["A"] * 100, [None] * 100)
    bank = est.history.banks[("A", 5)]
    assert len(bank.vectors) <= 2**5
    assert sum(bank.counts) == 50 * 20


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_state_dict_round_trip_resumes_exactly(method):
    rng = np.random.default_rng(3)
    batches = []
    for step in range(5):
        rewards = rng.integers(0, 2, 30).astype(float)
        pids = np.repeat([f"{step}-{i}" for i in range(6)], 5)
        datasets = np.repeat(["A", "B", "C"] * 2, 5)
        groups = np.repeat(["F|a1", None, "M|a2", "a3", None, "F|a1"], 5)
        batches.append((rewards, pids, datasets, groups))
    straight = make_estimator(method)
    outs = [straight(*b) for b in batches]
    first = make_estimator(method)
    for b in batches[:3]:
        first(*b)
    state = json.loads(json.dumps(first.state_dict()))  # must survive JSON (checkpoint files)
    resumed = make_estimator(method)
    resumed.load_state_dict(state)
    for b, expected in zip(batches[3:], outs[3:], strict=False):
        np.testing.assert_allclose(resumed(*b), expected, atol=1e-12)


def test_state_of_another_method_is_rejected():
    with pytest.raises(ValueError, match="not 'eqpo'"):
        make_estimator("eqpo").load_state_dict(make_estimator("grpo_dro").state_dict())


def test_grpo_dro_weights_follow_exponentiated_losses():
    est = make_estimator("grpo_dro", eta=0.5)
    rewards = [1, 1, 0, 0]
    est(rewards, [0, 0, 1, 1], ["A"] * 4, ["F", "F", "M", "M"])
    # q_F ~ exp(0.5 * 0), q_M ~ exp(0.5 * 1), normalised
    q_m = math.exp(0.5) / (1 + math.exp(0.5))
    assert est.weights[("A", "M")] == pytest.approx(q_m)
    # second call: advantages = grpo * C * q
    adv = est([1, 0, 1, 0], [2, 2, 3, 3], ["A"] * 4, ["F", "F", "M", "M"])
    q = {"F": math.exp(0.5 * 0.5), "M": math.exp(0.5 * 1.5)}
    total = q["F"] + q["M"]
    g = 0.5 / (math.sqrt(0.5) + 1e-6)
    np.testing.assert_allclose(
        adv,
        [g * 2 * q["F"] / total, -g * 2 * q["F"] / total, g * 2 * q["M"] / total, -g * 2 * q["M"] / total],
        rtol=1e-9,
    )


def test_grpo_dro_new_cell_enters_at_mean_weight():
    est = make_estimator("grpo_dro", eta=1.0)
    est([1, 0], [0, 0], ["A", "A"], ["F", "F"])
    est([1, 0], [1, 1], ["A", "A"], ["M", "M"])
    w = est.weights
    # F: one update (loss .5) in call 1. M enters in call 2 at F's weight, then M alone is updated
    # (loss .5), so w_M / w_F = exp(1.0 * 0.5).
    assert w[("A", "M")] / w[("A", "F")] == pytest.approx(math.exp(0.5))


def test_drpo_kl_damping_needs_the_kl():
    """The damping itself is worked by hand in test_advantages_by_hand.py."""
    est = make_estimator("drpo", scope="batch", kl_quantile=0.9)
    with pytest.raises(ValueError, match="needs per-response KL"):
        est([1, 0, 0, 1], [0, 0, 1, 1], ["A"] * 4, [None] * 4)


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_padding_rows_get_zero_and_change_nothing(method):
    rewards = [1, 0, 1, 0, 0, 1]
    pids = ["a", "a", "a", "b", "b", "b"]
    datasets = ["A", "A", "A", "B", "B", "B"]
    groups = ["F", "F", "F", None, None, None]
    _, clean = run(method, rewards, pids, datasets, groups)
    _, padded = run(method, rewards + [1, 0], pids + [None, None], datasets + ["A", "A"], groups + ["F", "F"])
    np.testing.assert_allclose(padded[:6], clean, atol=1e-12)
    assert list(padded[6:]) == [0.0, 0.0]


@pytest.mark.parametrize("method", sorted(ESTIMATORS))
def test_an_empty_batch_returns_nothing_and_is_not_a_step(method):
    """An empty (or all-padding) batch leaves the state as it was: it is no step of the history (a
    window of steps would otherwise count it)."""
    options = {"scope": "history", "window": 2} if get_method(method).clusters else {}
    est, _ = run(method, [1, 0, 1, 1], ["a", "a", "b", "b"], groups=["F", "F", None, None], **options)
    before = json.dumps(est.state_dict())
    for rewards, pids in (([], []), ([1.0, 0.0], [None, None])):
        adv = est(rewards, pids, ["A"] * len(rewards), [None] * len(rewards))
        assert adv.dtype == float and adv.tolist() == [0.0] * len(rewards)
        assert json.dumps(est.state_dict()) == before and est.last_stats().group_stats == ()


def test_permuting_prompts_permutes_advantages():
    rng = np.random.default_rng(4)
    rewards = rng.integers(0, 2, 50).astype(float)
    pids = np.repeat(np.arange(10), 5)
    groups = np.repeat([None, "F", None, "M", None] * 2, 5)
    _, base = run("eqpo", rewards, pids, groups=list(groups), scope="batch")
    perm = np.concatenate([np.arange(p * 5, p * 5 + 5) for p in rng.permutation(10)])
    _, shuffled = run("eqpo", rewards[perm], pids[perm], groups=list(groups[perm]), scope="batch")
    np.testing.assert_allclose(shuffled, base[perm], atol=1e-9)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"rewards": [1, 0], "pids": [0]}, "prompt_ids has 1 entries"),
        ({"rewards": [1, float("nan")], "pids": [0, 0]}, "finite"),
        ({"rewards": [1, 0], "pids": [0, 0], "datasets": ["A", "B"]}, "different datasets"),
        ({"rewards": [1, 0], "pids": [0, 0], "groups": ["F", "M"]}, "different groups"),
        ({"rewards": [[1, 0]], "pids": [0]}, "1-D"),
    ],
)
def test_malformed_input_is_rejected(kwargs, message):
    n = len(kwargs["pids"])
    with pytest.raises(ValueError, match=message):
        run(
            "eqpo",
            kwargs["rewards"],
            kwargs["pids"],
            kwargs.get("datasets", ["A"] * n),
            kwargs.get("groups", [None] * n),
        )


def test_unknown_method_and_options_are_rejected_clearly():
    with pytest.raises(ValueError, match="choose one of"):
        make_estimator("ppo")
    with pytest.raises(ValueError, match=r"\['k_max'\] do not apply to estimator 'grpo'"):
        make_estimator("grpo", k_max=3)
    with pytest.raises(ValueError, match="scope must be"):
        make_estimator("eqpo", scope="epoch")
    assert "kl_quantile" in estimator_options("drpo") and "scope" in estimator_options("drpo")
