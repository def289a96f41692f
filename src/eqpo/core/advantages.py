"""Outcome-reward advantage estimators: the baselines and EQPO (docs/method.md §3).

Every estimator is made by :func:`make_estimator` and called on one batch of N responses::

    est = make_estimator("eqpo", scope="history", k_max=3, tau=0.1)
    adv = est(rewards, prompt_ids, datasets, groups)      # four 1-D arrays of length N -> (N,)

- ``rewards``: float reward per response, in [0, 1] for the paper's reward; NaN is rejected.
- ``prompt_ids``: which prompt each response answers (verl's ``uid``): rollouts of one prompt share
  it. ``None`` marks a padding row: it gets advantage 0 and enters no statistic.
- ``datasets``: the dataset (domain) of each response's prompt. ``None`` reads as "Unknown".
- ``groups``: the explicit demographic group key (e.g. "F|a3", see :mod:`eqpo.core.groups`), or a missing
  value (None, NaN, "" or "UNK") for an unlabeled prompt.

Stateful estimators (eqpo, eqpo_nd, drpo in history scope; grpo_dro) keep their state inside and
expose ``state_dict()`` / ``load_state_dict()`` (JSON-serialisable), so a resumed run continues
exactly. After each call, ``est.last_stats()`` reports what the call used (:class:`EstimatorStats`:
group statistics, chosen k, implicit cluster of each prompt); every backend logs it the same way
(:mod:`eqpo.runs.files`).
"""

from __future__ import annotations

import inspect
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from eqpo.core.groups import elbow_kmeans

EPS = 1e-6
MISSING_GROUP_TOKENS = frozenset({"", "UNK"})
UNKNOWN_DATASET = "Unknown"
_ND_FACTOR_MAX = 1e6


# ----------------------------------------------------------------------------------------------
# Batch layout
# ----------------------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value in MISSING_GROUP_TOKENS


def normalize_group(value: Any) -> str | None:
    """An explicit group label, or None when missing (None, NaN, "", "UNK"), as the estimators read it."""
    return None if _is_missing(value) else str(value)


@dataclass
class Batch:
    """One batch of responses laid out by prompt.

    rewards: (N,) float. prompt: (N,) prompt position 0..P-1, -1 for padding.
    prompt_ids: (P,) the caller's prompt ids. prompt_dataset: (P,) str. prompt_group: (P,) str or None.
    n: (P,) rollouts per prompt. order: (N_valid,) response positions sorted by prompt (stable, so
    rollouts keep their order within a prompt).
    """

    rewards: np.ndarray
    prompt: np.ndarray
    prompt_ids: np.ndarray
    prompt_dataset: np.ndarray
    prompt_group: np.ndarray
    n: np.ndarray
    order: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        return self.prompt >= 0

    def prompt_sums(self) -> np.ndarray:
        v = self.valid
        return np.bincount(self.prompt[v], weights=self.rewards[v], minlength=len(self.n))

    def reward_matrix(self, prompts: np.ndarray, length: int) -> np.ndarray:
        """(len(prompts), length) rollout rewards of prompts that all have ``length`` rollouts,
        each row in rollout order."""
        starts = np.concatenate([[0], np.cumsum(self.n)[:-1]])
        return self.rewards[self.order][starts[prompts][:, None] + np.arange(length)[None, :]]


def _clean(values: np.ndarray, fn: Callable[[Any], Any]) -> np.ndarray:
    """Apply fn to each distinct value once (batches repeat a few labels thousands of times)."""
    codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=False)
    return np.array([fn(u) for u in uniques] + [None], dtype=object)[codes]


def _as_1d(name: str, values: Any, length: int | None) -> np.ndarray:
    arr = np.asarray(values, dtype=object if name != "rewards" else None)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one entry per response), got shape {arr.shape}")
    if length is not None and len(arr) != length:
        raise ValueError(f"{name} has {len(arr)} entries but rewards has {length}; give one per response")
    return arr


def layout_batch(rewards: Any, prompt_ids: Any, datasets: Any, groups: Any) -> Batch:
    """Validate the four per-response arrays and group them by prompt (see :class:`Batch`)."""
    try:
        r = np.asarray(rewards, dtype=float)
    except (TypeError, ValueError) as err:
        raise ValueError(f"rewards must be numbers: {err}") from None
    if r.ndim != 1:
        raise ValueError(f"rewards must be 1-D (one per response), got shape {r.shape}")
    n_resp = len(r)
    pid = _as_1d("prompt_ids", prompt_ids, n_resp)
    ds = _as_1d("datasets", datasets, n_resp)
    gr = _as_1d("groups", groups, n_resp)
    codes, uniques = pd.factorize(pd.Series(pid, dtype=object), use_na_sentinel=True)
    valid = codes >= 0
    bad = ~np.isfinite(r) & valid
    if bad.any():
        raise ValueError(f"rewards must be finite; response(s) {np.flatnonzero(bad)[:10].tolist()} are not")
    n_prompts = len(uniques)
    order = np.flatnonzero(valid)[np.argsort(codes[valid], kind="stable")]
    n = np.bincount(codes[valid], minlength=n_prompts)
    first = order[np.concatenate([[0], np.cumsum(n)[:-1]])] if n_prompts else np.zeros(0, dtype=int)
    ds_clean = _clean(ds, lambda d: UNKNOWN_DATASET if _is_missing(d) else str(d))
    gr_clean = _clean(gr, normalize_group)
    prompt_dataset, prompt_group = ds_clean[first], gr_clean[first]
    for name, per_resp, per_prompt in (("dataset", ds_clean, prompt_dataset), ("group", gr_clean, prompt_group)):
        mismatch = np.zeros(n_resp, dtype=bool)
        mismatch[valid] = per_resp[valid] != per_prompt[codes[valid]]
        if mismatch.any():
            k = int(np.flatnonzero(mismatch)[0])
            raise ValueError(
                f"prompt {pid[k]!r} has responses with different {name}s "
                f"({per_resp[k]!r} vs {per_prompt[codes[k]]!r}); every rollout of a prompt must share it"
            )
    return Batch(
        rewards=np.where(valid, r, 0.0),
        prompt=codes.astype(np.int64),
        prompt_ids=np.asarray(uniques, dtype=object),
        prompt_dataset=prompt_dataset,
        prompt_group=prompt_group,
        n=n,
        order=order,
    )


# ----------------------------------------------------------------------------------------------
# Per-response statistics shared by estimators
# ----------------------------------------------------------------------------------------------


def grpo_scores(batch: Batch, eps: float = EPS) -> np.ndarray:
    """(r - mean_q) / (std_q + eps) with unbiased std; a single-rollout prompt gets mean 0, std 1."""
    v = batch.valid
    p = batch.prompt[v]
    r = batch.rewards[v]
    n = batch.n.astype(float)
    mean = np.bincount(p, weights=r, minlength=len(n)) / np.maximum(n, 1)
    sq = np.bincount(p, weights=(r - mean[p]) ** 2, minlength=len(n))
    std = np.sqrt(sq / np.maximum(n - 1, 1))
    mean = np.where(n > 1, mean, 0.0)
    std = np.where(n > 1, std, 1.0)
    out = np.zeros(len(batch.rewards))
    out[v] = (r - mean[p]) / (std[p] + eps)
    return out


def _batch_std(values: np.ndarray) -> float:
    """Unbiased std over responses; 1.0 when fewer than two responses make it undefined."""
    return float(np.std(values, ddof=1)) if len(values) > 1 else 1.0


# ----------------------------------------------------------------------------------------------
# What one call reports
# ----------------------------------------------------------------------------------------------


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


@dataclass(frozen=True)
class EstimatorStats:
    """What an estimator's last call reports (:meth:`Estimator.last_stats`); empty for the estimators
    without groups (grpo, grpo_rs, rloo, reinforce_pp).

    group_stats: one dict per group the call used, with plain Python values: dataset, group (the
    explicit group, "UNK" for Group DRO's unlabeled cell, "cluster<i>" for an implicit group),
    implicit (bool), N (prompts, or the cluster's size), rbar (mean rollout reward, in [0, 1] for the
    paper's reward), and the estimator's own quantity: factor (the hierarchical scalers' divisor,
    with N_domain and batch_prompts) or weight (Group DRO's C * q_c, mean 1).
    k: dataset -> number of implicit groups chosen. clusters: prompt id -> implicit cluster id of the
    call's clustered prompts.
    """

    group_stats: tuple[dict, ...] = ()
    k: Mapping[str, int] = field(default_factory=dict)
    clusters: Mapping[Any, int] = field(default_factory=dict)

    @classmethod
    def of(
        cls, group_stats: Sequence[Mapping] = (), k: Mapping | None = None, clusters: Mapping | None = None
    ) -> EstimatorStats:
        """Plain copies: numpy scalars become Python numbers, k and cluster ids ints."""
        return cls(
            group_stats=tuple({key: _plain(v) for key, v in row.items()} for row in group_stats),
            k={str(d): int(v) for d, v in (k or {}).items()},
            clusters={p: int(c) for p, c in (clusters or {}).items()},
        )


# ----------------------------------------------------------------------------------------------
# Registry
# ----------------------------------------------------------------------------------------------

ESTIMATORS: dict[str, Callable[..., Estimator]] = {}


def register_estimator(name: str) -> Callable:
    """Class or factory decorator: ``make_estimator(name, **options)`` will build it."""

    def decorate(factory: Callable) -> Callable:
        if name in ESTIMATORS and ESTIMATORS[name] is not factory:
            raise ValueError(f"estimator {name!r} is already registered to {ESTIMATORS[name]!r}")
        ESTIMATORS[name] = factory
        return factory

    return decorate


def estimator_defaults(method: str) -> dict[str, Any]:
    """The options ``make_estimator(method, ...)`` accepts, with their defaults.

    Keyword-only parameters of the factory; for a class, also those of the base-class constructors
    it forwards ``**options`` to (the nearest constructor's default wins).
    """
    factory = ESTIMATORS[method]
    chain = [c.__dict__["__init__"] for c in getattr(factory, "__mro__", ()) if "__init__" in c.__dict__]
    defaults: dict[str, Any] = {}
    for init in chain or [factory]:
        params = inspect.signature(init).parameters.values()
        for p in params:
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in defaults:
                defaults[p.name] = p.default
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            break
    return defaults


def estimator_options(method: str) -> list[str]:
    """Names of the options ``make_estimator(method, ...)`` accepts (see :func:`estimator_defaults`)."""
    return list(estimator_defaults(method))


def check_estimator_options(method: str, options: Mapping[str, Any], where: str = "", also: Sequence[str] = ()) -> None:
    """Raise a ValueError naming the options ``make_estimator(method)`` does not take and the ones it
    does (``where``: where the options were written, e.g. "algorithm.eqpo: "; ``also``: other keys
    that place accepts)."""
    if method not in ESTIMATORS:
        raise ValueError(f"unknown advantage estimator {method!r}; choose one of {sorted(ESTIMATORS)}")
    allowed = estimator_options(method)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepts = f"{allowed or 'no options'}" + (f" plus {sorted(also)}" if also else "")
        raise ValueError(f"{where}option(s) {unknown} do not apply to estimator {method!r}; it accepts {accepts}")


def make_estimator(method: str, **options: Any) -> Estimator:
    """Build the advantage estimator for ``method`` (one of :data:`ESTIMATORS`) with its options."""
    check_estimator_options(method, options)
    return ESTIMATORS[method](**options)


class Estimator:
    """Base class: ``est(rewards, prompt_ids, datasets, groups) -> (N,) advantages``."""

    name = "base"
    _stats: EstimatorStats | None = None

    def __call__(self, rewards, prompt_ids, datasets, groups) -> np.ndarray:
        batch = layout_batch(rewards, prompt_ids, datasets, groups)
        self._stats = None
        if not batch.valid.any():
            return np.zeros(len(batch.rewards))
        adv = self.compute(batch)
        adv[~batch.valid] = 0.0
        return adv

    def compute(self, batch: Batch) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def last_stats(self) -> EstimatorStats:
        """The group statistics, chosen k and implicit clusters of the last call (see
        :class:`EstimatorStats`); what every backend logs."""
        return self._stats if self._stats is not None else EstimatorStats()

    def state_dict(self) -> dict:
        return {"method": self.name}

    def load_state_dict(self, state: dict) -> None:
        if state.get("method") != self.name:
            raise ValueError(f"state is for estimator {state.get('method')!r}, not {self.name!r}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@register_estimator("grpo")
class GRPO(Estimator):
    """GRPO: (r - mean_q) / (std_q + eps) within each prompt's rollouts (verl ``grpo``)."""

    name = "grpo"

    def __init__(self, *, eps: float = EPS):
        self.eps = eps

    def compute(self, batch: Batch) -> np.ndarray:
        return grpo_scores(batch, self.eps)


@register_estimator("grpo_rs")
class GRPOResampled(GRPO):
    """GRPO+RS: GRPO advantages; the resampling happens on the training set
    (:func:`eqpo.core.groups.balance_by_group`), not here."""

    name = "grpo_rs"


@register_estimator("rloo")
class RLOO(Estimator):
    """RLOO: r minus the mean of the prompt's other rollouts (verl ``rloo``; a lone rollout keeps r)."""

    name = "rloo"

    def compute(self, batch: Batch) -> np.ndarray:
        v = batch.valid
        p = batch.prompt[v]
        n = batch.n[p].astype(float)
        sums = batch.prompt_sums()[p]
        r = batch.rewards[v]
        out = np.zeros(len(batch.rewards))
        out[v] = np.where(n > 1, (n * r - sums) / np.maximum(n - 1, 1), r)
        return out


@register_estimator("reinforce_pp")
class ReinforcePP(Estimator):
    """REINFORCE++: outcome reward whitened over the whole batch, no per-prompt baseline
    (verl ``reinforce_plus_plus`` with gamma = 1: (r - mean) / sqrt(var_unbiased + 1e-8))."""

    name = "reinforce_pp"

    def compute(self, batch: Batch) -> np.ndarray:
        r = batch.rewards[batch.valid]
        var = float(np.var(r, ddof=1)) if len(r) > 1 else 0.0
        out = np.zeros(len(batch.rewards))
        out[batch.valid] = (r - r.mean()) / math.sqrt(var + 1e-8)
        return out


@register_estimator("grpo_dro")
class GroupDRO(Estimator):
    """GRPO + online Group DRO weights over cells c = (dataset, explicit group) (Sagawa et al. 2019).

    Each call: q_c <- q_c * exp(eta * (1 - mean reward of c)) for the cells in the batch, then
    renormalise; A = grpo * (C * q_c) with C the number of cells seen so far (mean weight 1).
    A cell seen for the first time enters at the mean weight (uniform start). Unlabeled prompts form
    their dataset's "UNK" cell. The weights are the state.
    """

    name = "grpo_dro"

    def __init__(self, *, eta: float = 0.01, eps: float = EPS):
        if eta < 0:
            raise ValueError(f"eta must be >= 0, got {eta}")
        self.eta, self.eps = eta, eps
        self.log_q: dict[tuple[str, str], float] = {}

    @property
    def weights(self) -> dict[tuple[str, str], float]:
        """Normalised weights q_c (sum 1)."""
        if not self.log_q:
            return {}
        logs = np.array(list(self.log_q.values()))
        q = np.exp(logs - logs.max())
        return dict(zip(self.log_q, q / q.sum(), strict=False))

    @staticmethod
    def _cells(batch: Batch) -> list[tuple[str, str]]:
        return [(d, "UNK" if g is None else g) for d, g in zip(batch.prompt_dataset, batch.prompt_group, strict=False)]

    def cell_stats(self, rewards, prompt_ids, datasets, groups) -> list[dict]:
        """The cells of one batch as :meth:`compute` forms them (per response, as its arguments):
        dataset, group, implicit (False), N (prompts), rbar (mean reward of their rollouts) and
        weight (C * q_c with the current weights; 0 for a cell not seen yet). A call reports the
        same rows, with the weights it used, in :meth:`last_stats`."""
        return self._cell_rows(layout_batch(rewards, prompt_ids, datasets, groups))

    def _cell_rows(self, batch: Batch) -> list[dict]:
        weights, sums = self.weights, batch.prompt_sums()
        cells: dict[tuple[str, str], list[float]] = {}
        for p, cell in enumerate(self._cells(batch)):
            acc = cells.setdefault(cell, [0, 0.0, 0.0])
            acc[0] += 1
            acc[1] += sums[p]
            acc[2] += batch.n[p]
        return [
            {
                "dataset": d,
                "group": g,
                "implicit": False,
                "N": int(n),
                "rbar": total / count,
                "weight": len(weights) * weights.get((d, g), 0.0),
            }
            for (d, g), (n, total, count) in cells.items()
        ]

    def compute(self, batch: Batch) -> np.ndarray:
        cells = self._cells(batch)
        sums = batch.prompt_sums()
        seen: dict[tuple[str, str], list[float]] = {}
        for p, cell in enumerate(cells):
            acc = seen.setdefault(cell, [0.0, 0.0])
            acc[0] += sums[p]
            acc[1] += batch.n[p]
        new = [c for c in seen if c not in self.log_q]
        if new:
            start = float(np.log(np.mean(np.exp(list(self.log_q.values()))))) if self.log_q else 0.0
            for c in new:
                self.log_q[c] = start
        for c, (total, count) in seen.items():
            self.log_q[c] += self.eta * (1.0 - total / count)
        weights = self.weights
        scale = np.array([len(weights) * weights[c] for c in cells])
        s = grpo_scores(batch, self.eps)
        v = batch.valid
        s[v] *= scale[batch.prompt[v]]
        self._stats = EstimatorStats.of(self._cell_rows(batch))
        return s

    def state_dict(self) -> dict:
        return {
            "method": self.name,
            "eta": self.eta,
            "log_q": [[d, g, w] for (d, g), w in self.log_q.items()],
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.log_q = {(d, g): float(w) for d, g, w in state["log_q"]}


# ----------------------------------------------------------------------------------------------
# Hierarchical (domain x group) scaling: eqpo, eqpo_nd, drpo
# ----------------------------------------------------------------------------------------------


class VectorBank:
    """Distinct reward vectors of one (dataset, rollout count) with their multiplicities."""

    def __init__(self, length: int):
        self.length = length
        self.index: dict[bytes, int] = {}
        self.vectors: list[np.ndarray] = []
        self.counts: list[float] = []

    def add(self, vectors: np.ndarray, sign: float = 1.0) -> np.ndarray:
        """Add (sign=+1) or remove (-1) the rows of vectors (V, length); returns their row ids."""
        rows = np.empty(len(vectors), dtype=np.int64)
        for i, vec in enumerate(vectors):
            key = vec.tobytes()
            row = self.index.get(key)
            if row is None:
                row = self.index[key] = len(self.vectors)
                self.vectors.append(vec.copy())
                self.counts.append(0.0)
            self.counts[row] += sign
            rows[i] = row
        return rows

    def lookup(self, vectors: np.ndarray) -> np.ndarray:
        return np.array([self.index[v.tobytes()] for v in vectors], dtype=np.int64)

    def active(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, X, weights) of the vectors currently held (count > 0), in lexicographic order of
        the vectors, so clustering depends on the multiset of vectors and not on arrival order."""
        counts = np.asarray(self.counts)
        rows = np.flatnonzero(counts > 0.5)
        X = np.asarray(self.vectors).reshape(-1, self.length)[rows]
        order = np.lexsort(X.T[::-1]) if len(rows) else rows
        return rows[order], X[order], counts[rows][order]


@dataclass
class StepStats:
    """Sufficient statistics of one batch: [prompts, reward sum, reward count] per key, and the
    reward vectors of the prompts that need clustering, per (dataset, rollout count)."""

    domain: dict[str, np.ndarray]
    explicit: dict[tuple[str, str], np.ndarray]
    vectors: dict[tuple[str, int], np.ndarray]


def _sum_by_key(keys: list, rows: np.ndarray) -> dict:
    """Row sums of ``rows`` (M, 3) per distinct key, keys in first-seen order."""
    if not keys:
        return {}
    codes, uniques = pd.factorize(pd.Series(keys, dtype=object))
    totals = np.zeros((len(uniques), rows.shape[1]))
    np.add.at(totals, codes, rows)
    return {key: totals[i] for i, key in enumerate(uniques)}


class History:
    """Accumulated :class:`StepStats` over steps, optionally over a sliding window of steps."""

    def __init__(self, window: int | None = None):
        self.window = window
        self.domain: dict[str, np.ndarray] = {}
        self.explicit: dict[tuple[str, str], np.ndarray] = {}
        self.banks: dict[tuple[str, int], VectorBank] = {}
        self.steps: deque[StepStats] = deque()

    def _apply(self, step: StepStats, sign: float) -> None:
        for store, delta in ((self.domain, step.domain), (self.explicit, step.explicit)):
            for key, value in delta.items():
                store[key] = store.get(key, np.zeros(3)) + sign * value
                if store[key][0] <= 0.5:
                    del store[key]
        for key, vectors in step.vectors.items():
            self.banks.setdefault(key, VectorBank(key[1])).add(vectors, sign)

    def push(self, step: StepStats) -> None:
        self._apply(step, +1.0)
        if self.window is not None:
            self.steps.append(step)
            while len(self.steps) > self.window:
                self._apply(self.steps.popleft(), -1.0)

    def state_dict(self) -> dict:
        def enc(step: StepStats) -> dict:
            return {
                "domain": [[k, v.tolist()] for k, v in step.domain.items()],
                "explicit": [[list(k), v.tolist()] for k, v in step.explicit.items()],
                "vectors": [[list(k), v.tolist()] for k, v in step.vectors.items()],
            }

        totals = StepStats(
            domain=self.domain,
            explicit=self.explicit,
            vectors={},
        )
        banks = []
        for key, bank in self.banks.items():
            rows, X, w = bank.active()
            banks.append([list(key), X.tolist(), w.tolist()])
        return {
            "window": self.window,
            "totals": enc(totals),
            "banks": banks,
            "steps": [enc(s) for s in self.steps],
        }

    @classmethod
    def from_state_dict(cls, state: dict) -> History:
        def dec(d: dict) -> StepStats:
            return StepStats(
                domain={k: np.asarray(v, dtype=float) for k, v in d["domain"]},
                explicit={tuple(k): np.asarray(v, dtype=float) for k, v in d["explicit"]},
                vectors={(k[0], int(k[1])): np.asarray(v, dtype=float).reshape(-1, int(k[1])) for k, v in d["vectors"]},
            )

        hist = cls(state["window"])
        totals = dec(state["totals"])
        hist.domain, hist.explicit = totals.domain, totals.explicit
        for key, X, w in state["banks"]:
            bank = hist.banks.setdefault((key[0], int(key[1])), VectorBank(int(key[1])))
            X = np.asarray(X, dtype=float).reshape(-1, int(key[1]))
            for vec, count in zip(X, w, strict=False):
                bank.add(vec[None, :], float(count))
        hist.steps = deque(dec(s) for s in state["steps"])
        return hist


class HierarchicalScaler(Estimator):
    """Shared machinery of eqpo, eqpo_nd and drpo: s = grpo, s' = s / factor(domain, group),
    A = s' / (batch std of s' + eps). Subclasses define which prompts are clustered and the factor."""

    use_demographics = True

    def __init__(
        self,
        *,
        scope: str = "history",
        k_max: int = 3,
        tau: float = 0.10,
        sort_reward_vectors: bool = False,
        window: int | None = None,
        seed: int = 0,
        decimals: int = 6,
        eps: float = EPS,
    ):
        if scope not in ("history", "batch"):
            raise ValueError(f"scope must be 'history' (authors' code) or 'batch' (paper equations), got {scope!r}")
        if window is not None and (scope != "history" or window < 1):
            raise ValueError("window (a number of steps >= 1) applies only to scope='history'")
        if k_max < 1 or not 0 <= tau <= 1:
            raise ValueError(f"need k_max >= 1 and 0 <= tau <= 1, got k_max={k_max}, tau={tau}")
        self.scope, self.k_max, self.tau = scope, int(k_max), float(tau)
        self.sort_reward_vectors, self.seed, self.decimals, self.eps = sort_reward_vectors, seed, decimals, eps
        self.history = History(window) if scope == "history" else None
        self.last_clusters: dict[Any, int] = {}
        self.last_k: dict[str, int] = {}
        self.last_group_stats: list[dict] = []
        self._fits: dict[tuple[str, int], tuple[np.ndarray, int]] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(scope={self.scope!r}, k_max={self.k_max}, tau={self.tau})"

    # -- statistics ---------------------------------------------------------------------------
    def _labeled(self, batch: Batch) -> np.ndarray:
        if not self.use_demographics:
            return np.zeros(len(batch.n), dtype=bool)
        return np.array([g is not None for g in batch.prompt_group], dtype=bool)

    def _step_stats(self, batch: Batch, labeled: np.ndarray) -> tuple[StepStats, dict]:
        rows = np.column_stack([np.ones(len(batch.n)), batch.prompt_sums(), batch.n])
        domain = _sum_by_key(list(batch.prompt_dataset), rows)
        lab = np.flatnonzero(labeled)
        explicit = _sum_by_key(list(zip(batch.prompt_dataset[lab], batch.prompt_group[lab], strict=False)), rows[lab])
        vectors, members = {}, {}
        unlabeled = np.flatnonzero(~labeled)
        for key in sorted(set(zip(batch.prompt_dataset[unlabeled], batch.n[unlabeled].tolist(), strict=False))):
            prompts = unlabeled[(batch.prompt_dataset[unlabeled] == key[0]) & (batch.n[unlabeled] == key[1])]
            X = batch.reward_matrix(prompts, key[1])
            X = np.sort(X, axis=1) if self.sort_reward_vectors else X
            vectors[key] = np.round(X, self.decimals) + 0.0  # + 0.0 folds -0.0 into 0.0 for hashing
            members[key] = prompts
        return StepStats(domain, explicit, vectors), members

    def _cluster(
        self, datasets: set[str], banks: dict[tuple[str, int], VectorBank], step: StepStats, members: dict, batch: Batch
    ):
        """Cluster each listed dataset's held vectors; returns per-prompt (size, centroid mean, cluster id)
        and per-dataset cluster summaries [(size, centroid mean), ...]."""
        size = np.full(len(batch.n), np.nan)
        mean = np.full(len(batch.n), np.nan)
        cid = np.full(len(batch.n), -1)
        summaries: dict[str, list[tuple[float, float]]] = {d: [] for d in datasets}
        self.last_k = {}
        self._fits = {}
        for key in sorted(k for k in banks if k[0] in datasets):
            bank = banks[key]
            rows, X, w = bank.active()
            if len(rows) == 0:
                continue
            res = elbow_kmeans(X, w, k_max=self.k_max, tau=self.tau, seed=self.seed)
            offset = len(summaries[key[0]])
            centroid_means = res.centers.mean(axis=1)
            summaries[key[0]].extend(zip(res.sizes.tolist(), centroid_means.tolist(), strict=False))
            self.last_k[key[0]] = self.last_k.get(key[0], 0) + res.k
            self._fits[key] = (res.centers, offset)
            if key in members:
                position = np.full(len(bank.vectors), -1)
                position[rows] = np.arange(len(rows))
                prompts = members[key]
                lab = res.labels[position[bank.lookup(step.vectors[key])]]
                size[prompts] = res.sizes[lab]
                mean[prompts] = centroid_means[lab]
                cid[prompts] = lab + offset
        return size, mean, cid, summaries

    def assign_clusters(self, dataset: str, reward_vectors: np.ndarray) -> np.ndarray:
        """Cluster ids that the last call's clustering of ``dataset`` gives to reward vectors (P, n):
        the nearest centroid, -1 where that dataset (with n rollouts) was not clustered in the last
        call. Used to track the implicit groups of a fixed set of prompts over training."""
        X = np.asarray(reward_vectors, dtype=float)
        out = np.full(len(X), -1)
        fit = self._fits.get((dataset, X.shape[1])) if X.ndim == 2 and len(X) else None
        if fit is None:
            return out
        centers, offset = fit
        X = np.round(np.sort(X, axis=1) if self.sort_reward_vectors else X, self.decimals)
        return ((X[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2).argmin(axis=1) + offset

    # -- the estimator ------------------------------------------------------------------------
    def compute(self, batch: Batch) -> np.ndarray:
        labeled = self._labeled(batch)
        step, members = self._step_stats(batch, labeled)
        if self.history is not None:
            self.history.push(step)
            domain, explicit, banks = self.history.domain, self.history.explicit, self.history.banks
        else:
            domain, explicit = step.domain, step.explicit
            banks = {}
            for key, vectors in step.vectors.items():
                banks[key] = VectorBank(key[1])
                banks[key].add(vectors)
        present = set(batch.prompt_dataset[~labeled].tolist())
        c_size, c_mean, c_id, summaries = self._cluster(present, banks, step, members, batch)

        factor = self._factors(batch, labeled, domain, explicit, c_size, c_mean, summaries)
        s = grpo_scores(batch, self.eps)
        v = batch.valid
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = s[v] / factor[batch.prompt[v]]
        scaled = np.where(np.isfinite(scaled), scaled, s[v])  # a non-finite scaled value keeps grpo's
        out = np.zeros(len(batch.rewards))
        out[v] = scaled / (_batch_std(scaled) + self.eps)

        self.last_clusters = {batch.prompt_ids[p]: int(c_id[p]) for p in np.flatnonzero(c_id >= 0)}
        self._record_stats(batch, labeled, domain, explicit, c_size, c_mean, c_id, factor)
        self._stats = EstimatorStats.of(self.last_group_stats, self.last_k, self.last_clusters)
        return out

    def _factors(self, batch, labeled, domain, explicit, c_size, c_mean, summaries) -> np.ndarray:
        raise NotImplementedError

    def _record_stats(self, batch, labeled, domain, explicit, c_size, c_mean, c_id, factor) -> None:
        rows: dict[tuple, dict] = {}
        for p in range(len(batch.n)):
            d = batch.prompt_dataset[p]
            if labeled[p]:
                g = batch.prompt_group[p]
                n_g, sum_g, cnt_g = explicit[(d, g)]
                key, stats = (d, g), {"N": n_g, "rbar": sum_g / cnt_g}
            else:
                key, stats = (d, f"cluster{c_id[p]}"), {"N": c_size[p], "rbar": c_mean[p]}
            if key not in rows:
                rows[key] = {
                    "dataset": d,
                    "group": key[1],
                    "implicit": not labeled[p],
                    **stats,
                    "N_domain": domain[d][0],
                    "factor": float(factor[p]),
                    "batch_prompts": 0,
                }
            rows[key]["batch_prompts"] += 1
        self.last_group_stats = list(rows.values())

    # -- state --------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "method": self.name,
            "scope": self.scope,
            "history": self.history.state_dict() if self.history is not None else None,
        }

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state["scope"] != self.scope:
            raise ValueError(f"state has scope {state['scope']!r}, this estimator {self.scope!r}")
        if self.history is not None:
            self.history = History.from_state_dict(state["history"])


@register_estimator("eqpo")
class EQPO(HierarchicalScaler):
    """EQPO (the paper's FairGRPO), docs/method.md §3.3.

    Groups are explicit where the prompt has demographics, else implicit (elbow K-means on the reward
    vectors of the dataset's unlabeled prompts). T_g = sqrt(N_g) * rbar_g over the dataset's prompts
    (explicit and unlabeled; rbar the flat mean of their rollout rewards); T_(gamma,g) likewise for
    the explicit group, or cluster size and centroid mean for an implicit one.
    s' = grpo / max(T_g * T_(gamma,g), eps); A = s' / (std_batch(s') + eps).
    """

    name = "eqpo"

    def _factors(self, batch, labeled, domain, explicit, c_size, c_mean, summaries):
        factor = np.empty(len(batch.n))
        for p, (d, g) in enumerate(zip(batch.prompt_dataset, batch.prompt_group, strict=False)):
            n_d, sum_d, cnt_d = domain[d]
            t_domain = math.sqrt(n_d) * sum_d / cnt_d
            if labeled[p]:
                n_g, sum_g, cnt_g = explicit[(d, g)]
                t_group = math.sqrt(n_g) * sum_g / cnt_g
            else:
                t_group = math.sqrt(c_size[p]) * c_mean[p]
            factor[p] = max(t_domain * t_group, self.eps)
        return factor


@register_estimator("eqpo_nodemo")
class EQPONoDemographics(EQPO):
    """EQPO trained without demographics: EQPO's factors (flat domain mean, no clamps) with every
    prompt unlabeled, so every group is a K-means cluster. This is what the authors' paper-era
    no-demographics run did (FairGRPO on a training file without the ``demo`` field); the
    qoq_med3 estimator with inverse-size domain mean and clamps is :class:`EQPOND`.
    """

    name = "eqpo_nodemo"
    use_demographics = False


def _inverse_size_mean(clusters: list[tuple[float, float]], eps: float) -> float:
    """Domain mean as released for DRPO / EQPO-ND: sum(mean_c / |c|) / sum(1 / |c|)."""
    sizes = np.array([c[0] for c in clusters])
    means = np.array([c[1] for c in clusters])
    return float((means / sizes).sum() / (1.0 / sizes).sum()) if len(clusters) else eps


@register_estimator("eqpo_nd")
class EQPOND(HierarchicalScaler):
    """EQPO-ND: EQPO with every prompt treated as unlabeled (demographics masked).

    T_g = max(sqrt(N_g) * mu_g, eps) with mu_g the inverse-cluster-size weighted mean of centroid
    means; group term sqrt(N_c) * max(mu_c, eps); factor clamped to [eps, 1e6].
    """

    name = "eqpo_nd"
    use_demographics = False

    def _factors(self, batch, labeled, domain, explicit, c_size, c_mean, summaries):
        t_domain = {
            d: max(math.sqrt(domain[d][0]) * _inverse_size_mean(summaries[d], self.eps), self.eps) for d in summaries
        }
        t_group = np.sqrt(c_size) * np.maximum(c_mean, self.eps)
        t_dom = np.array([t_domain[d] for d in batch.prompt_dataset])
        return np.clip(t_dom * t_group, self.eps, _ND_FACTOR_MAX)


@register_estimator("drpo")
class DRPO(HierarchicalScaler):
    """DRPO (QoQ-Med): domain x cluster scaling without demographics, no clamping, optional
    KL-aware damping m = t_p / (t_p + max(A * KL, 0)) with t_p the p-th quantile (off by default).

    Pass per-response KL as ``est(..., kl=kl)`` when ``kl_quantile`` is set.
    """

    name = "drpo"
    use_demographics = False

    def __init__(self, *, kl_quantile: float | None = None, **options: Any):
        super().__init__(**options)
        if kl_quantile is not None and not 0 < kl_quantile < 1:
            raise ValueError(f"kl_quantile must be in (0, 1), got {kl_quantile}")
        self.kl_quantile = kl_quantile
        self._kl: np.ndarray | None = None

    def __call__(self, rewards, prompt_ids, datasets, groups, kl=None) -> np.ndarray:
        if self.kl_quantile is not None and kl is None:
            raise ValueError("drpo with kl_quantile set needs per-response KL: est(..., kl=kl)")
        self._kl = None if kl is None else np.asarray(kl, dtype=float)
        return super().__call__(rewards, prompt_ids, datasets, groups)

    def _factors(self, batch, labeled, domain, explicit, c_size, c_mean, summaries):
        t_domain = {
            d: max(math.sqrt(domain[d][0]) * _inverse_size_mean(summaries[d], self.eps), self.eps) for d in summaries
        }
        t_dom = np.array([t_domain[d] for d in batch.prompt_dataset])
        return t_dom * np.sqrt(c_size) * c_mean

    def compute(self, batch: Batch) -> np.ndarray:
        out = super().compute(batch)
        if self.kl_quantile is None or self._kl is None:
            return out
        v = batch.valid
        z = np.maximum(out[v] * self._kl[v], 0.0)
        t = max(float(np.quantile(z, self.kl_quantile)), self.eps)
        out[v] *= t / (t + z)
        return out
