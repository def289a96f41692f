"""EQPO-ND, EQPO's history scope and DRPO's KL damping against values worked out by hand from
docs/method.md §3 (the arithmetic is written out below; nothing is taken from the implementation).

Clusters are made predictable: with exactly two distinct reward vectors in a dataset and k_max = 2
the elbow rule keeps k = k_cap = 2, so each distinct vector is its own cluster (centre = the vector,
size = its multiplicity); with k_max = 1 every unlabeled prompt of a dataset is one cluster.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from eqpo.core.advantages import make_estimator

EPS = 1e-6
SQRT2 = math.sqrt(2.0)


def grpo_two(a: float, b: float) -> tuple[float, float]:
    """GRPO scores of a prompt with two rollouts [a, b]: unbiased std |a - b| / sqrt(2)."""
    mean, std = (a + b) / 2, abs(a - b) / SQRT2
    return (a - mean) / (std + EPS), (b - mean) / (std + EPS)


def normalised(values: list[float]) -> np.ndarray:
    """A = s' / (unbiased std of s' over the batch + eps), no re-centring."""
    v = np.array(values)
    mean = v.mean()
    std = math.sqrt(((v - mean) ** 2).sum() / (len(v) - 1))
    return v / (std + EPS)


def call(est, prompts: list[tuple[str, str | None, list[float]]], **kwargs) -> np.ndarray:
    """prompts: (dataset, group, rollout rewards); one prompt id per prompt."""
    rewards, ids, datasets, groups = [], [], [], []
    for i, (dataset, group, rs) in enumerate(prompts):
        for r in rs:
            rewards.append(r)
            ids.append(f"p{i}")
            datasets.append(dataset)
            groups.append(group)
    return est(np.array(rewards), ids, datasets, groups, **kwargs)


# ----------------------------------------------------------------------------------------------
# EQPO-ND (qoq_med3 estimator): inverse-size domain mean, clamps
# ----------------------------------------------------------------------------------------------


def test_eqpo_nd_by_hand_with_the_factor_clamp_binding():
    """Dataset D, two prompts (demographics given but ignored), two clusters.

    P1 rewards [2e-6, 0]: cluster c1 (size 1, centroid mean 1e-6); P2 rewards [1, 0]: c2 (size 1,
    mean 0.5). Domain: N = 2, inverse-size mean mu = (1e-6/1 + 0.5/1) / (1/1 + 1/1) = 0.2500005,
    T_D = sqrt(2) * mu. Factors: c1: T_D * sqrt(1) * 1e-6 = 3.5e-7 < eps, clamped UP to eps = 1e-6;
    c2: T_D * sqrt(1) * 0.5.
    """
    est = make_estimator("eqpo_nd", scope="batch", k_max=2)
    got = call(est, [("D", "F|a2", [2e-6, 0.0]), ("D", "M|a3", [1.0, 0.0])])
    mu = (1e-6 / 1 + 0.5 / 1) / (1 / 1 + 1 / 1)
    t_domain = SQRT2 * mu
    factor_1 = max(t_domain * 1.0 * 1e-6, EPS)
    assert t_domain * 1e-6 < EPS and factor_1 == EPS  # the clamp binds
    factor_2 = t_domain * 1.0 * 0.5
    s1, s2 = grpo_two(2e-6, 0.0), grpo_two(1.0, 0.0)
    expected = normalised([s1[0] / factor_1, s1[1] / factor_1, s2[0] / factor_2, s2[1] / factor_2])
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    # Without the clamp P1 would weigh 1/0.35 = 2.8 times more: the clamp changes the result.
    unclamped = normalised([s1[0] / (t_domain * 1e-6), s1[1] / (t_domain * 1e-6), s2[0] / factor_2, s2[1] / factor_2])
    assert not np.allclose(got, unclamped, rtol=1e-3)


def test_eqpo_nd_domain_mean_is_inverse_size_weighted_where_eqpo_nodemo_is_flat():
    """Dataset D: P1 = P2 = [1, 0] (cluster a: size 2, mean 0.5), P3 = [0, 1] (cluster b: size 1,
    mean 0.5), P4 = [0, 0] (cluster c: size 1, mean 0) with k_max = 3 (three distinct vectors;
    k_cap = 3, the elbow keeps 3 as the drops are D_2 = 1.0 and D_3 = 0.5 >= 0.1 D_2).

    eqpo_nd: mu = (0.5/2 + 0.5/1 + 0/1) / (1/2 + 1 + 1) = 0.3, T_D = sqrt(4) * 0.3 = 0.6;
    group terms sqrt(2)*0.5, sqrt(1)*0.5 and sqrt(1)*max(0, eps).
    eqpo_nodemo (EQPO on a demographics-free file): flat domain mean 3/8, T_D = 2 * 3/8 = 0.75;
    group terms as above but max(T_D * T_c, eps) only on the product.
    """
    prompts = [("D", None, [1.0, 0.0]), ("D", None, [1.0, 0.0]), ("D", None, [0.0, 1.0]), ("D", None, [0.0, 0.0])]
    s = [grpo_two(*rs) for _, _, rs in prompts]
    terms = [SQRT2 * 0.5, SQRT2 * 0.5, 1.0 * 0.5, None]

    nd = call(make_estimator("eqpo_nd", scope="batch", k_max=3), prompts)
    t_nd = 2 * ((0.5 / 2 + 0.5 / 1 + 0 / 1) / (1 / 2 + 1 + 1))
    factors = [t_nd * t for t in terms[:3]] + [min(max(t_nd * EPS, EPS), 1e6)]
    np.testing.assert_allclose(
        nd, normalised([x / f for (pair, f) in zip(s, factors, strict=False) for x in pair]), rtol=1e-9
    )

    flat = call(make_estimator("eqpo_nodemo", scope="batch", k_max=3), prompts)
    t_flat = 2 * (3 / 8)
    factors = [t_flat * t for t in terms[:3]] + [max(t_flat * 0.0, EPS)]
    np.testing.assert_allclose(
        flat, normalised([x / f for (pair, f) in zip(s, factors, strict=False) for x in pair]), rtol=1e-9
    )
    # P4's rewards are all 0, so its GRPO score (and advantage) is 0 under both.
    assert nd[6:] == pytest.approx([0, 0]) and flat[6:] == pytest.approx([0, 0])


# ----------------------------------------------------------------------------------------------
# EQPO's history scope over three steps
# ----------------------------------------------------------------------------------------------


STEPS = [
    [("D", "F", [1.0, 0.0]), ("D", "M", [1.0, 1.0])],  # step 1
    [("D", "F", [0.0, 1.0]), ("D", "M", [1.0, 0.0])],  # step 2
    [("D", "F", [1.0, 1.0]), ("D", "M", [0.0, 1.0])],  # step 3
]


def history_expectation(step: int) -> np.ndarray:
    """EQPO with history scope, worked out from the counts and means accumulated up to ``step``.

    step 1: D: N=2, rbar 3/4; F: N=1, rbar 1/2; M: N=1, rbar 1.
    step 2: D: N=4, rbar 5/8; F: N=2, rbar 2/4; M: N=2, rbar 3/4.
    step 3: D: N=6, rbar 8/12; F: N=3, rbar 4/6; M: N=3, rbar 4/6.
    """
    domain = {1: (2, 3 / 4), 2: (4, 5 / 8), 3: (6, 8 / 12)}[step]
    group = {
        1: {"F": (1, 1 / 2), "M": (1, 1.0)},
        2: {"F": (2, 2 / 4), "M": (2, 3 / 4)},
        3: {"F": (3, 4 / 6), "M": (3, 4 / 6)},
    }[step]
    t_d = math.sqrt(domain[0]) * domain[1]
    values = []
    for _, g, rs in STEPS[step - 1]:
        factor = max(t_d * math.sqrt(group[g][0]) * group[g][1], EPS)
        values += [x / factor for x in grpo_two(*rs)]
    return normalised(values)


def batch_expectation(step: int) -> np.ndarray:
    """The same step with batch scope: only that step's two prompts count."""
    prompts = STEPS[step - 1]
    rewards = [r for _, _, rs in prompts for r in rs]
    t_d = math.sqrt(2) * (sum(rewards) / len(rewards))
    values = []
    for _, _, rs in prompts:
        factor = max(t_d * 1.0 * (sum(rs) / 2), EPS)
        values += [x / factor for x in grpo_two(*rs)]
    return normalised(values)


def test_eqpo_history_scope_by_hand_over_three_steps():
    est = make_estimator("eqpo", scope="history")
    batch = make_estimator("eqpo", scope="batch")
    for step in (1, 2, 3):
        got = call(est, STEPS[step - 1])
        np.testing.assert_allclose(got, history_expectation(step), rtol=1e-9)
        np.testing.assert_allclose(call(batch, STEPS[step - 1]), batch_expectation(step), rtol=1e-9)
    # Step 2 is where the scopes part: history weighs F's prompt 1.5 times M's, batch equally.
    h, b = history_expectation(2), batch_expectation(2)
    assert abs(h[0]) / abs(h[2]) == pytest.approx(1.5) and abs(b[0]) / abs(b[2]) == pytest.approx(1.0)


def test_history_resumes_from_its_state_between_steps():
    est = make_estimator("eqpo", scope="history")
    call(est, STEPS[0])
    resumed = make_estimator("eqpo", scope="history")
    resumed.load_state_dict(est.state_dict())
    np.testing.assert_allclose(call(resumed, STEPS[1]), history_expectation(2), rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# DRPO's KL-aware damping
# ----------------------------------------------------------------------------------------------


def test_drpo_kl_damping_by_hand():
    """One dataset, P1 = [1, 0], P2 = [0, 1], k_max = 1: one cluster of size 2, centroid (0.5, 0.5).
    Domain: N = 2, inverse-size mean (0.5/2) / (1/2) = 0.5, T_D = sqrt(2) * 0.5; factor
    T_D * sqrt(2) * 0.5 = 0.5 for every response. s = (+a, -a, -a, +a), a = 0.5 / (sqrt(0.5) + eps);
    s' = s / 0.5 = 2s, unbiased std 2a sqrt(4/3): A = (+c, -c, -c, +c), c = 2a / (2a sqrt(4/3) + eps).

    KL = (0.1, 0.2, 0.3, 0.4): z = max(A * KL, 0) = (0.1c, 0, 0, 0.4c); its 0.5-quantile (linear
    interpolation, position 1.5 of the sorted (0, 0, 0.1c, 0.4c)) is t = 0.05c; m = t / (t + z) =
    (1/3, 1, 1, 1/9).
    """
    prompts = [("D", None, [1.0, 0.0]), ("D", None, [0.0, 1.0])]
    a = 0.5 / (math.sqrt(0.5) + EPS)
    c = 2 * a / (2 * a * math.sqrt(4 / 3) + EPS)
    plain = call(make_estimator("drpo", scope="batch", k_max=1), prompts)
    np.testing.assert_allclose(plain, [c, -c, -c, c], rtol=1e-9)
    damped = call(
        make_estimator("drpo", scope="batch", k_max=1, kl_quantile=0.5), prompts, kl=np.array([0.1, 0.2, 0.3, 0.4])
    )
    np.testing.assert_allclose(damped, [c / 3, -c, -c, c / 9], rtol=1e-9)


# ----------------------------------------------------------------------------------------------
# Group DRO's cell statistics (what the backends log)
# ----------------------------------------------------------------------------------------------


def test_group_dro_cell_stats_by_hand():
    """Cells (D, F): prompts p0 [1, 1] and p1 [1, 0]; (D, UNK): p2 [0, 0] (no group). After one call
    with eta = 0.5 both cells start at log q = 0, then (D, F) += 0.5 * (1 - 3/4), (D, UNK) += 0.5 * 1:
    weights C * q = 2 * e^x / (e^0.125 + e^0.5). A padding row (prompt id None) counts nowhere."""
    est = make_estimator("grpo_dro", eta=0.5)
    rewards = [1, 1, 1, 0, 0, 0, 0.7]
    args = (rewards, ["p0", "p0", "p1", "p1", "p2", "p2", None], ["D"] * 7, ["F", "F", "F", "F", None, None, "F"])
    est(*args)
    stats = {(c["dataset"], c["group"]): c for c in est.last_stats().group_stats}  # what the backends log
    assert list(est.last_stats().group_stats) == est.cell_stats(*args)
    total = math.exp(0.125) + math.exp(0.5)
    assert stats[("D", "F")]["N"] == 2 and stats[("D", "F")]["rbar"] == pytest.approx(0.75)
    assert stats[("D", "UNK")]["N"] == 1 and stats[("D", "UNK")]["rbar"] == 0.0
    assert stats[("D", "F")]["weight"] == pytest.approx(2 * math.exp(0.125) / total)
    assert stats[("D", "UNK")]["weight"] == pytest.approx(2 * math.exp(0.5) / total)
    assert not any(c["implicit"] for c in stats.values())
