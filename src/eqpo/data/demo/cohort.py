"""A synthetic, deterministic demo cohort that mirrors the paper's seven datasets.

It lets a small CPU trainer run the whole pipeline without real images: every sample is a numeric
feature vector with a label (set), a patient, a patient-level split and demographics, some masked.
The settings below were fixed once, from the reasoning written here, before any training result
existed; they are not tuned toward any method.

Table (one row per sample)
--------------------------
``sample_id`` ("CheXpert-000123"), ``patient_id`` ("CheXpert-P00042"), ``dataset``, ``split``
("train"/"val"/"test", per patient), ``labels`` (list of str; one label for single-label datasets),
``true_age`` (years), ``true_sex`` ("F"/"M"; None where the dataset records no sex), ``age`` and
``sex`` (the RECORDED demographics: the true ones, or NaN/None for the masked patients),
``group`` (:func:`eqpo.core.groups.explicit_group` of the recorded values; None when masked),
``true_group`` (the same from the true values), then ``f0 .. f{n_features-1}`` (float32).

Generative model (per dataset d; every random draw is seeded, see "Determinism")
-----------------------------------------------------------------------------
1. Size. ``n_d`` = the dataset's share of ``n_samples`` (largest-remainder rounding). Default shares
   (:data:`DATASET_PROFILES`): CheXpert 0.40, VinDr-Mammo 0.15, ISIC-2020 0.12, HAM10000 0.12,
   PAD-UFES-20 0.11, Hemorrhage 0.05, COVID-BLUES 0.05 (CheXpert dominates as in the paper's data;
   the CT and ultrasound sets are small).
2. Patients. Each patient has U{samples_per_patient} samples (the last one is cut so the dataset has
   exactly ``n_d``). A patient's true age bin is drawn from the dataset's age mix (shares of a1..a4),
   the age uniformly among the integer years of that bin (within the dataset's age range), and the
   sex from the dataset's female share (only for datasets that record sex). Patients are split into
   train/val/test with the ``split`` shares (exact counts, largest remainder), and the recorded
   demographics of a ``missing_demographics`` share of patients (exact count) are masked, completely
   at random. Every sample of a patient shares its demographics, split and masking.
3. Labels, independent of the demographics (no label shift between groups). Single-label: drawn from
   the dataset's class prior. Multi-label (CheXpert): "No Finding" with its prevalence, alone;
   otherwise each other label independently with its prevalence, and a sample left with no label
   gets one, drawn in proportion to the prevalences (so every sample has one or more labels, as in
   the paper's data, where label-less studies were dropped).
4. Features (``F = n_features``, unit: standard deviations of the per-sample noise)::

       x = signal(g) * sum_{l in labels} P_d[l] + shift(g) + u_patient + eps,
       eps ~ N(0, noise_sd^2 I),   u_patient ~ N(0, patient_sd^2 I) shared by a patient's samples.

   Prototypes ``P_d``: Gaussian vectors, one per label. Single-label: centred over the classes and
   scaled so their root-mean-square pairwise distance is ``class_separation``; multi-label: each of
   norm ``class_separation`` (the distance between "label present" and "absent").
   The group g is the TRUE group. The dataset's majority group is its modal age bin and, where sex is
   recorded, its modal sex (from the profile): it gets signal 1 and no shift. A sample outside the
   modal age bin has its signal multiplied by ``minority_signal`` and is shifted by
   ``age_shift * v_d[bin]``; a sample of the non-modal sex has its signal multiplied by
   ``sex_minority_signal`` and is shifted by ``sex_shift * v_d[sex]`` (both apply to an
   intersection such as F|a1). The ``v`` are unit vectors drawn in the span of the prototypes, so the
   shift moves evidence between classes (like age-related changes that mimic or mask a finding); a
   shift outside that span would be invisible to a linear classifier and is not modelled.

Chosen settings and why
-----------------------
- ``class_separation = 2.5`` with ``noise_sd = 1`` and ``patient_sd = 0.5`` (total within-class
  sd ~ 1.12): for the majority group of a binary task d' ~ 2.2, i.e. a Bayes accuracy of about 0.86
  at balanced priors; five-class tasks land lower. Clearly learnable, far from perfect.
- ``minority_signal = 0.6``: outside the modal age bin d' drops to ~1.3 (about 0.75 at balanced
  priors): a clear but partial loss for the under-represented age bins (a synthetic stand-in, not
  an estimate from the paper). ``sex_minority_signal = 0.85``: a milder sex gap.
- ``age_shift = 0.75``, ``sex_shift = 0.35`` (noise sd units): a shift comparable to half the
  minority class distance, so a decision rule fit mostly on the majority is mis-centred for each
  minority group; the groups' shifts point in different directions, so no single classifier without
  group information can undo them.
- ``patient_sd = 0.5`` makes a patient's samples correlated, which is why splits are by patient.

Measured once, after fixing the settings (not used to choose them): a per-dataset scikit-learn
LogisticRegression fit on the train split of a 100,000-sample cohort (seed 0), test-split accuracy
overall (majority-class baseline) / majority group / all other groups:
Hemorrhage 0.85 (0.76) / 0.88 / 0.83; VinDr-Mammo 0.79 (0.68) / 0.83 / 0.74; ISIC-2020 0.88 (0.85) /
0.91 / 0.86; HAM10000 0.73 (0.64) / 0.79 / 0.70; PAD-UFES-20 0.63 (0.40) / 0.73 / 0.58;
COVID-BLUES 0.83 (0.49) / 0.86 / 0.78. CheXpert (one-vs-rest, per-label accuracy) 0.90 (0.85) /
0.92 / 0.89. With a skewed prior (ISIC-2020, HAM10000) accuracy moves little, so the majority-minority
gap is a few points and can flip in a small cohort or for another seed's world; tests/data/test_demo_cohort.py
checks the baseline and the gap on the 100,000-sample cohort.

Dataset profiles (:data:`DATASET_PROFILES`; real figures from the datasets' published metadata)
---------------------------------------------------------------------------------------------
- Class priors: Hemorrhage "Has Hemorrhage" 0.25 (real: ~13% of slices, 44% of scans);
  VinDr-Mammo BIRAD 1..5 = 0.67/0.23/0.05/0.04/0.01 (real training counts); ISIC-2020 "Malignant"
  0.15 (real 1.8%, raised so a small cohort has positives); HAM10000 Melanoma/Nevus/BCC/AKIEC/Other
  = 0.11/0.67/0.05/0.03/0.14 (real dx counts); PAD-UFES-20 = 0.03/0.11/0.36/0.40/0.10 (real counts);
  COVID-BLUES "Has COVID" 0.52 (real 33/63, the one balanced task).
- CheXpert prevalences, close to the CheXpert training positive rates (U-Zeros): No Finding 0.10
  (alone); given a finding: Support Devices 0.52, Lung Opacity 0.45, Pleural Effusion 0.38,
  Edema 0.24, Atelectasis 0.15, Cardiomegaly 0.12, Pneumothorax 0.09, Consolidation 0.07,
  Enlarged Cardiomediastinum 0.05, Lung Lesion 0.04, Fracture 0.04, Pneumonia 0.03,
  Pleural Other 0.015.
- Age mixes (a1, a2, a3, a4): every dataset has a modal bin of 0.60-0.63 and a bin under 0.1:
  CheXpert (0.04, 0.20, 0.60, 0.16); Hemorrhage (0.60, 0.28, 0.09, 0.03) (real mean age 28);
  VinDr-Mammo (0.01, 0.34, 0.60, 0.05); ISIC-2020 (0.08, 0.60, 0.27, 0.05); HAM10000
  (0.06, 0.28, 0.60, 0.06); PAD-UFES-20 (0.02, 0.15, 0.63, 0.20); COVID-BLUES (0.02, 0.12, 0.60,
  0.26). Female shares: CheXpert 0.40, Hemorrhage 0.40, ISIC-2020 0.45, HAM10000 0.45, PAD-UFES-20
  0.47; VinDr-Mammo and COVID-BLUES record age only (``true_sex`` is None).
- A dataset without a profile (a user's own :class:`~eqpo.core.vocabularies.DatasetSpec`) gets
  :func:`default_profile`: share 0.1 before normalisation, class prior proportional to 2**-k, 0.2
  per-label prevalence, age mix (0.05, 0.25, 0.60, 0.10), female share 0.45.

Determinism
-----------
Each dataset draws from its own generators seeded by (``seed``, CRC32 of the dataset name): one for
the "world" (prototypes and shift directions, which do not depend on ``n_samples``) and one for the
samples. The same config gives an identical table; another seed gives another one. Everything is
vectorised with numpy; 6,000 samples take a few tens of milliseconds.

CLI::

    python -m eqpo.data.demo.cohort --config-json '{"n_samples": 3000}' --out cohort.parquet \
        --summary summary.csv

Parquet needs pyarrow (or fastparquet); :func:`eqpo.data.cohort_table.read_cohort` restores the exact
table (label lists, None for missing strings).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

from eqpo.core.groups import AGE_BINS, AGE_EDGES, SEXES, explicit_group
from eqpo.core.vocabularies import PAPER_DATASETS, DatasetSpec
from eqpo.data.cohort_table import STR_COLUMNS, write_cohort

SPLITS = ("train", "val", "test")
NO_FINDING = "No Finding"  # in a multi-label vocabulary: the label that never co-occurs with another
META_COLUMNS = (
    "sample_id",
    "patient_id",
    "dataset",
    "split",
    "labels",
    "true_age",
    "true_sex",
    "age",
    "sex",
    "group",
    "true_group",
)


# ----------------------------------------------------------------------------------------------
# Dataset profiles: sizes, label priors, demographic mixes
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetProfile:
    """How one dataset's samples are drawn (the "realism" facts; see the module docstring).

    share: relative size weight (normalised over the datasets in the cohort; unitless).
    label_weights: one per label, in vocabulary order. Single-label: the class prior (normalised).
        Multi-label: per-label prevalence in [0, 1]; "No Finding" is the chance of a finding-free
        sample, the others are prevalences given at least one finding.
    age_mix: shares of the age bins a1..a4 (normalised).
    female_share: chance that a patient is female, in [0, 1]; used only when the dataset records sex.
    age_range: (youngest, oldest) age in whole years; bin a1 starts at the first, a4 ends at the second.
    """

    share: float
    label_weights: tuple[float, ...]
    age_mix: tuple[float, float, float, float]
    female_share: float = 0.45
    age_range: tuple[int, int] = (18, 90)


_CHEXPERT_PREVALENCE = {
    "No Finding": 0.10,
    "Enlarged Cardiomediastinum": 0.05,
    "Cardiomegaly": 0.12,
    "Lung Opacity": 0.45,
    "Lung Lesion": 0.04,
    "Edema": 0.24,
    "Consolidation": 0.07,
    "Pneumonia": 0.03,
    "Atelectasis": 0.15,
    "Pneumothorax": 0.09,
    "Pleural Effusion": 0.38,
    "Pleural Other": 0.015,
    "Fracture": 0.04,
    "Support Devices": 0.52,
}

DATASET_PROFILES: dict[str, DatasetProfile] = {
    "CheXpert": DatasetProfile(
        0.40,
        tuple(_CHEXPERT_PREVALENCE[label] for label in PAPER_DATASETS["CheXpert"].labels),
        (0.04, 0.20, 0.60, 0.16),
        female_share=0.40,
        age_range=(18, 90),
    ),
    "Hemorrhage": DatasetProfile(0.05, (0.75, 0.25), (0.60, 0.28, 0.09, 0.03), female_share=0.40, age_range=(1, 90)),
    "VinDr-Mammo": DatasetProfile(0.15, (0.67, 0.23, 0.05, 0.04, 0.01), (0.01, 0.34, 0.60, 0.05), age_range=(20, 90)),
    "ISIC-2020": DatasetProfile(0.12, (0.85, 0.15), (0.08, 0.60, 0.27, 0.05), female_share=0.45, age_range=(5, 90)),
    "HAM10000": DatasetProfile(
        0.12, (0.11, 0.67, 0.05, 0.03, 0.14), (0.06, 0.28, 0.60, 0.06), female_share=0.45, age_range=(5, 85)
    ),
    "PAD-UFES-20": DatasetProfile(
        0.11, (0.03, 0.11, 0.36, 0.40, 0.10), (0.02, 0.15, 0.63, 0.20), female_share=0.47, age_range=(6, 94)
    ),
    "COVID-BLUES": DatasetProfile(0.05, (0.48, 0.52), (0.02, 0.12, 0.60, 0.26), age_range=(18, 97)),
}


def default_profile(spec: DatasetSpec) -> DatasetProfile:
    """Profile for a dataset with no entry in :data:`DATASET_PROFILES` (see the module docstring)."""
    k = len(spec.labels)
    if spec.multi_label:
        weights = tuple(0.1 if label == NO_FINDING else 0.2 for label in spec.labels)
    else:
        weights = tuple(2.0**-i for i in range(k))
    return DatasetProfile(0.1, weights, (0.05, 0.25, 0.60, 0.10))


def _bin_year_ranges(age_range: tuple[int, int]) -> np.ndarray:
    """(4, 2) inclusive integer-year range of each age bin within the dataset's age range."""
    lows = [age_range[0]] + [int(math.floor(edge)) + 1 for edge in AGE_EDGES]
    highs = [int(math.floor(edge)) for edge in AGE_EDGES] + [age_range[1]]
    return np.array([lows, highs]).T


def _check_profile(name: str, spec: DatasetSpec, p: DatasetProfile) -> None:
    where = f"profile of dataset {name!r}"
    if len(p.label_weights) != len(spec.labels):
        raise ValueError(f"{where}: {len(p.label_weights)} label weights for {len(spec.labels)} labels")
    w = np.asarray(p.label_weights, dtype=float)
    if not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"{where}: label weights must be finite, >= 0 and not all 0, got {p.label_weights}")
    if spec.multi_label and np.any(w > 1):
        raise ValueError(f"{where}: multi-label prevalences must be <= 1, got {p.label_weights}")
    mix = np.asarray(p.age_mix, dtype=float)
    if mix.shape != (len(AGE_BINS),) or np.any(mix < 0) or mix.sum() <= 0:
        raise ValueError(f"{where}: age_mix needs {len(AGE_BINS)} shares >= 0, got {p.age_mix}")
    ranges = _bin_year_ranges(p.age_range)
    empty = [b for b, (lo, hi), m in zip(AGE_BINS, ranges, mix, strict=False) if m > 0 and lo > hi]
    if p.age_range[0] < 0 or empty:
        raise ValueError(f"{where}: age_range {p.age_range} leaves no whole year in bin(s) {empty}")
    if not 0.0 <= p.female_share <= 1.0:
        raise ValueError(f"{where}: female_share must be in [0, 1], got {p.female_share}")
    if not p.share >= 0:
        raise ValueError(f"{where}: share must be >= 0, got {p.share}")


def majority_group(spec: DatasetSpec, profile: DatasetProfile | None = None) -> str | None:
    """The group with the strongest signal and no shift: modal age bin (and modal sex, where recorded).

    Ties go to the first bin and to "M" at a female share of exactly 0.5.
    """
    profile = profile or DATASET_PROFILES.get(spec.name) or default_profile(spec)
    modal_bin = AGE_BINS[int(np.argmax(profile.age_mix))]
    modal_sex = "F" if profile.female_share > 0.5 else "M"
    parts = []
    if "sex" in spec.attributes:
        parts.append(modal_sex)
    if "age" in spec.attributes:
        parts.append(modal_bin)
    return "|".join(parts) if parts else None


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CohortConfig:
    """Settings of the demo cohort (fixed once; see "Chosen settings and why" in the module docstring).

    n_samples: total number of samples (rows) over all datasets.
    n_features: length of each sample's feature vector (columns f0..f{n_features-1}).
    seed: non-negative integer seed; same seed and settings -> identical table.
    missing_demographics: share of PATIENTS (per dataset, exact count after rounding) whose recorded
        age and sex are masked (age NaN, sex None, group None), in [0, 1].
    split: (train, val, test) shares of PATIENTS per dataset; non-negative, summing to 1.
    samples_per_patient: (min, max) number of samples of one patient, inclusive, min >= 1.
    dataset_shares: optional {dataset: relative size} overriding the profile shares (unitless,
        >= 0, normalised over the cohort's datasets; 0 leaves a dataset out). Stored as sorted pairs.
    class_separation: distance between class prototypes for the majority group, in units of the
        noise sd (single-label: RMS pairwise distance of the centred prototypes; multi-label: the
        norm of each label's prototype).
    minority_signal: multiplier (0, 1] of the class signal outside the dataset's modal age bin.
    sex_minority_signal: multiplier (0, 1] of the class signal for the dataset's non-modal sex.
    age_shift: norm of the covariate shift of each non-modal age bin, in noise-sd units.
    sex_shift: norm of the covariate shift of the non-modal sex, in noise-sd units.
    patient_sd: sd of the per-patient random offset shared by a patient's samples, noise-sd units.
    noise_sd: sd of the independent per-sample, per-feature Gaussian noise (the unit of the features).
    """

    n_samples: int = 6000
    n_features: int = 16
    seed: int = 0
    missing_demographics: float = 0.3
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    samples_per_patient: tuple[int, int] = (1, 3)
    dataset_shares: tuple[tuple[str, float], ...] | None = None
    class_separation: float = 2.5
    minority_signal: float = 0.6
    sex_minority_signal: float = 0.85
    age_shift: float = 0.75
    sex_shift: float = 0.35
    patient_sd: float = 0.5
    noise_sd: float = 1.0

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("n_samples", _as_int("n_samples", self.n_samples, minimum=1))
        put("n_features", _as_int("n_features", self.n_features, minimum=1))
        put("seed", _as_int("seed", self.seed, minimum=0))
        put("missing_demographics", _as_float("missing_demographics", self.missing_demographics, 0.0, 1.0))
        split = _as_tuple("split", self.split, 3)
        split = tuple(_as_float("split", v, 0.0, 1.0) for v in split)
        if abs(sum(split) - 1.0) > 1e-6:
            raise ValueError(f"split shares must sum to 1, got {split} (sum {sum(split)})")
        put("split", split)
        spp = tuple(
            _as_int("samples_per_patient", v, minimum=1)
            for v in _as_tuple("samples_per_patient", self.samples_per_patient, 2)
        )
        if spp[0] > spp[1]:
            raise ValueError(f"samples_per_patient must be (min, max) with min <= max, got {spp}")
        put("samples_per_patient", spp)
        if self.dataset_shares is not None:
            items = self.dataset_shares.items() if isinstance(self.dataset_shares, Mapping) else self.dataset_shares
            try:
                pairs = tuple(sorted((str(k), _as_float(f"dataset_shares[{k!r}]", v, 0.0)) for k, v in items))
            except (TypeError, ValueError) as err:
                raise ValueError(f"dataset_shares must map dataset names to shares >= 0: {err}") from None
            if len({k for k, _ in pairs}) != len(pairs):
                raise ValueError(f"dataset_shares names a dataset twice: {[k for k, _ in pairs]}")
            put("dataset_shares", pairs)
        put("class_separation", _as_float("class_separation", self.class_separation, 0.0))
        put("minority_signal", _as_float("minority_signal", self.minority_signal, 0.0, 1.0, open_low=True))
        put("sex_minority_signal", _as_float("sex_minority_signal", self.sex_minority_signal, 0.0, 1.0, open_low=True))
        put("age_shift", _as_float("age_shift", self.age_shift, 0.0))
        put("sex_shift", _as_float("sex_shift", self.sex_shift, 0.0))
        put("patient_sd", _as_float("patient_sd", self.patient_sd, 0.0))
        put("noise_sd", _as_float("noise_sd", self.noise_sd, 0.0, open_low=True))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CohortConfig:
        """Build from a plain dict (e.g. parsed JSON); lists become tuples. Unknown keys: ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"the cohort config must be a dict/JSON object, got {type(d).__name__}")
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown cohort config key(s) {unknown}; valid keys: {valid}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict; ``CohortConfig.from_dict(c.to_dict()) == c``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["split"] = list(self.split)
        out["samples_per_patient"] = list(self.samples_per_patient)
        if self.dataset_shares is not None:
            out["dataset_shares"] = dict(self.dataset_shares)
        return out


def _as_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (Integral, Real)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not isinstance(value, Integral):
        if not (math.isfinite(value) and float(value).is_integer()):
            raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _as_float(name: str, value: Any, low: float, high: float = math.inf, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if value < low or value > high or (open_low and value == low):
        bracket = "(" if open_low else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value}")
    return value


def _as_tuple(name: str, value: Any, length: int) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != length:
        raise ValueError(f"{name} must be a list of {length} numbers, got {value!r}")
    return tuple(value)


# ----------------------------------------------------------------------------------------------
# Generator
# ----------------------------------------------------------------------------------------------


def _largest_remainder(total: int, weights: Sequence[float]) -> np.ndarray:
    """Integer counts summing to ``total``, proportional to ``weights`` (ties to the earlier entry)."""
    w = np.asarray(weights, dtype=float)
    exact = total * w / w.sum()
    counts = np.floor(exact).astype(np.int64)
    order = np.argsort(-(exact - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    return counts


def _dataset_rngs(seed: int, name: str) -> tuple[np.random.Generator, np.random.Generator]:
    key = zlib.crc32(name.encode("utf-8"))
    return (np.random.default_rng([seed, key, 0]), np.random.default_rng([seed, key, 1]))


def _world(spec: DatasetSpec, config: CohortConfig, rng: np.random.Generator):
    """Prototypes (K, F) and unit shift directions per age bin (4, F) and per sex (2, F)."""
    k, f = len(spec.labels), config.n_features
    protos = rng.standard_normal((k, f))
    if spec.multi_label:
        norms = np.linalg.norm(protos, axis=1, keepdims=True)
        protos = protos / np.where(norms > 0, norms, 1.0) * config.class_separation
    else:
        protos = protos - protos.mean(axis=0)
        if k > 1:
            d2 = ((protos[:, None, :] - protos[None, :, :]) ** 2).sum(axis=2)
            rms = math.sqrt(d2[np.triu_indices(k, 1)].mean())
            protos = protos * (config.class_separation / rms if rms > 0 else 0.0)
    coeffs = rng.standard_normal((len(AGE_BINS) + len(SEXES), k))
    directions = coeffs @ protos  # random vectors in the span of the prototypes
    norms = np.linalg.norm(directions, axis=1, keepdims=True)
    directions = directions / np.where(norms > 0, norms, 1.0)
    return protos, directions[: len(AGE_BINS)], directions[len(AGE_BINS) :]


def _draw_labels(spec: DatasetSpec, profile: DatasetProfile, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, K) boolean label matrix."""
    k = len(spec.labels)
    w = np.asarray(profile.label_weights, dtype=float)
    if not spec.multi_label:
        y = rng.choice(k, size=n, p=w / w.sum())
        onehot = np.zeros((n, k), dtype=bool)
        onehot[np.arange(n), y] = True
        return onehot
    exclusive = spec.labels.index(NO_FINDING) if NO_FINDING in spec.labels else None
    prev = w.copy()
    alone = np.zeros(n, dtype=bool)
    if exclusive is not None:
        alone = rng.random(n) < prev[exclusive]
        prev[exclusive] = 0.0
    if prev.sum() == 0:  # only "No Finding" has weight: every sample is finding-free
        alone[:] = exclusive is not None
        prev = np.ones(k)
    found = rng.random((n, k)) < prev
    empty = np.flatnonzero(~found.any(axis=1))
    found[empty, rng.choice(k, size=len(empty), p=prev / prev.sum())] = True
    if exclusive is not None:
        found[alone] = False
        found[alone, exclusive] = True
    return found


def _label_lists(spec: DatasetSpec, onehot: np.ndarray) -> list[list[str]]:
    """Label matrix -> list of label lists (vocabulary order), one Python list per row."""
    rows, cols = np.nonzero(onehot)
    names = np.asarray(spec.labels, dtype=object)[cols]
    bounds = np.cumsum(np.bincount(rows, minlength=len(onehot)))[:-1]
    return [part.tolist() for part in np.split(names, bounds)]


def _groups(ages: np.ndarray, sexes: np.ndarray, attributes: Sequence[str]) -> np.ndarray:
    """explicit_group over parallel arrays (ages in whole years, sexes "F"/"M"/None), called once per
    distinct (age, sex) pair."""
    sex_code = np.select([sexes == "F", sexes == "M"], [0, 1], default=2)
    pairs, inverse = np.unique(np.stack([ages, sex_code], axis=1), axis=0, return_inverse=True)
    keys = np.array(
        [explicit_group(a, (SEXES + (None,))[int(s)], attributes) for a, s in pairs] + [None], dtype=object
    )[:-1]
    return keys[inverse.reshape(-1)]


def _make_dataset(spec: DatasetSpec, profile: DatasetProfile, n: int, config: CohortConfig) -> dict[str, Any]:
    world_rng, rng = _dataset_rngs(config.seed, spec.name)
    protos, age_dirs, sex_dirs = _world(spec, config, world_rng)
    has_sex = "sex" in spec.attributes

    # Patients and how many samples each has.
    lo, hi = config.samples_per_patient
    per_patient = rng.integers(lo, hi + 1, size=-(-n // lo))
    total = np.cumsum(per_patient)
    n_patients = int(np.searchsorted(total, n)) + 1
    per_patient = per_patient[:n_patients]
    per_patient[-1] -= int(total[n_patients - 1]) - n
    patient = np.repeat(np.arange(n_patients), per_patient)

    # Patient-level demographics, split and masking.
    mix = np.asarray(profile.age_mix, dtype=float)
    age_bin_code = rng.choice(len(AGE_BINS), size=n_patients, p=mix / mix.sum())
    ranges = _bin_year_ranges(profile.age_range)
    true_age = rng.integers(ranges[age_bin_code, 0], ranges[age_bin_code, 1] + 1).astype(float)
    female = rng.random(n_patients) < profile.female_share
    sex_code = np.where(female, SEXES.index("F"), SEXES.index("M"))
    split_code = np.empty(n_patients, dtype=np.int64)
    split_code[rng.permutation(n_patients)] = np.repeat(
        np.arange(len(SPLITS)), _largest_remainder(n_patients, config.split)
    )
    masked = np.zeros(n_patients, dtype=bool)
    masked[rng.permutation(n_patients)[: int(round(config.missing_demographics * n_patients))]] = True
    offset = rng.standard_normal((n_patients, config.n_features)) * config.patient_sd

    # Labels, then features.
    onehot = _draw_labels(spec, profile, n, rng)
    modal_bin = int(np.argmax(mix))
    modal_sex = SEXES.index(majority_group(spec, profile).split("|")[0]) if has_sex else -1
    minority_age = (age_bin_code != modal_bin)[patient]
    minority_sex = (sex_code != modal_sex)[patient] if has_sex else np.zeros(n, dtype=bool)
    signal = np.where(minority_age, config.minority_signal, 1.0) * np.where(
        minority_sex, config.sex_minority_signal, 1.0
    )
    shift = (
        config.age_shift * minority_age[:, None] * age_dirs[age_bin_code[patient]]
        + config.sex_shift * minority_sex[:, None] * sex_dirs[sex_code[patient]]
    )
    noise = rng.standard_normal((n, config.n_features)) * config.noise_sd
    x = signal[:, None] * (onehot @ protos) + shift + offset[patient] + noise

    # Columns.
    sex_names = np.asarray(SEXES, dtype=object)[sex_code] if has_sex else np.full(n_patients, None, dtype=object)
    rec_age = np.where(masked, np.nan, true_age)
    rec_sex = np.where(masked, None, sex_names)
    patient_ids = np.array([f"{spec.name}-P{j:05d}" for j in range(n_patients)], dtype=object)
    true_group = _groups(true_age, sex_names, spec.attributes)
    group = np.where(masked, None, true_group)
    return {
        "sample_id": [f"{spec.name}-{i:06d}" for i in range(n)],
        "patient_id": patient_ids[patient],
        "dataset": np.full(n, spec.name, dtype=object),
        "split": np.asarray(SPLITS, dtype=object)[split_code[patient]],
        "labels": _label_lists(spec, onehot),
        "true_age": true_age[patient],
        "true_sex": sex_names[patient],
        "age": rec_age[patient],
        "sex": rec_sex[patient],
        "group": group[patient],
        "true_group": true_group[patient],
        "x": x.astype(np.float32),
    }


def _resolve(
    config: CohortConfig, datasets: Mapping[str, DatasetSpec], profiles: Mapping[str, DatasetProfile] | None
) -> list[tuple[DatasetSpec, DatasetProfile, int]]:
    if not datasets:
        raise ValueError("make_cohort needs at least one dataset")
    for key, spec in datasets.items():
        if not isinstance(spec, DatasetSpec) or spec.name != key:
            raise ValueError(f"datasets must map each name to its DatasetSpec; {key!r} maps to {spec!r}")
    table = {**DATASET_PROFILES, **(profiles or {})}
    chosen = [(spec, table.get(name) or default_profile(spec)) for name, spec in datasets.items()]
    for spec, profile in chosen:
        _check_profile(spec.name, spec, profile)
    shares = [profile.share for _, profile in chosen]
    if config.dataset_shares is not None:
        override = dict(config.dataset_shares)
        unknown = sorted(set(override) - set(datasets))
        if unknown:
            raise ValueError(f"dataset_shares names unknown dataset(s) {unknown}; known: {list(datasets)}")
        shares = [override.get(spec.name, share) for (spec, _), share in zip(chosen, shares, strict=False)]
    if sum(shares) <= 0:
        raise ValueError("every dataset has share 0: nothing to generate")
    counts = _largest_remainder(config.n_samples, shares)
    return [(spec, profile, int(c)) for (spec, profile), c in zip(chosen, counts, strict=False) if c > 0]


def make_cohort(
    config: CohortConfig | None = None,
    datasets: Mapping[str, DatasetSpec] = PAPER_DATASETS,
    profiles: Mapping[str, DatasetProfile] | None = None,
) -> pd.DataFrame:
    """The demo cohort: one row per sample, columns :data:`META_COLUMNS` then the features.

    datasets: the DatasetSpecs to simulate (default: the paper's seven), keyed by name.
    profiles: optional per-dataset :class:`DatasetProfile` overrides; datasets with neither an entry
        here nor in :data:`DATASET_PROFILES` use :func:`default_profile`.
    Rows are ordered by dataset (in ``datasets`` order), then patient, then sample.
    """
    config = CohortConfig() if config is None else config
    parts = [_make_dataset(spec, profile, n, config) for spec, profile, n in _resolve(config, datasets, profiles)]
    columns: dict[str, Any] = {}
    for name in META_COLUMNS:
        if name == "labels":
            values = [labels for part in parts for labels in part["labels"]]
            columns[name] = pd.Series(values, dtype=object)
        elif name in ("true_age", "age"):
            columns[name] = pd.Series(np.concatenate([part[name] for part in parts]), dtype=np.float64)
        else:
            values = np.concatenate([np.asarray(part[name], dtype=object) for part in parts])
            columns[name] = pd.Series(values, dtype="str" if name in STR_COLUMNS else object)
    x = np.concatenate([part["x"] for part in parts])
    for j in range(config.n_features):
        columns[f"f{j}"] = pd.Series(x[:, j], dtype=np.float32)
    return pd.DataFrame(columns)


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The feature column names of a cohort table, in order: ["f0", "f1", ...]."""
    names = [c for c in table.columns if isinstance(c, str) and c[:1] == "f" and c[1:].isdigit()]
    names.sort(key=lambda c: int(c[1:]))
    if names != [f"f{j}" for j in range(len(names))]:
        raise ValueError(f"feature columns must be f0..f(n-1) without gaps, got {names}")
    return names


# ----------------------------------------------------------------------------------------------
# Summary (Table 1 of the README) and parquet I/O
# ----------------------------------------------------------------------------------------------


def _shares_text(counts: pd.Series, total: int) -> str:
    counts = counts.sort_values(ascending=False, kind="stable")
    return "; ".join(f"{key} {value / total:.3f}" for key, value in counts.items())


def describe_cohort(table: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset (in table order): sizes, splits, label prior and demographic mix.

    Columns: dataset, n_samples, n_patients, n_train/n_val/n_test (samples), train/val/test_patients,
    labels_per_sample (mean), label_prior ("label share; ..." by share; for multi-label the shares
    are prevalences and may sum above 1), masked_patient_share, mean_age (true), female_share (true;
    NaN without sex), age_bin_shares and group_shares (true groups, "key share; ..."),
    majority_group / majority_group_share and smallest_group / smallest_group_share (true groups).
    """
    missing = [
        c
        for c in ("dataset", "patient_id", "split", "labels", "true_age", "true_sex", "age", "true_group")
        if c not in table.columns
    ]
    if missing:
        raise ValueError(f"describe_cohort: column(s) {missing} missing; columns are {list(table.columns)}")
    rows = []
    for name, part in table.groupby("dataset", sort=False):
        n = len(part)
        patients = part.drop_duplicates("patient_id")
        labels = part["labels"].explode()
        groups = part["true_group"].value_counts()
        bins = pd.Series(pd.cut(part["true_age"], [-np.inf, *AGE_EDGES, np.inf], labels=AGE_BINS))
        sexes = part["true_sex"].dropna()
        row: dict[str, Any] = {"dataset": name, "n_samples": n, "n_patients": len(patients)}
        for split in SPLITS:
            row[f"n_{split}"] = int((part["split"] == split).sum())
        for split in SPLITS:
            row[f"{split}_patients"] = int((patients["split"] == split).sum())
        row["labels_per_sample"] = float(part["labels"].map(len).mean())
        row["label_prior"] = _shares_text(labels.value_counts(), n)
        row["masked_patient_share"] = float(patients["age"].isna().mean())
        row["mean_age"] = float(part["true_age"].mean())
        row["female_share"] = float((sexes == "F").mean()) if len(sexes) else np.nan
        row["age_bin_shares"] = _shares_text(bins.value_counts().loc[lambda s: s > 0].astype(int), n)
        row["group_shares"] = _shares_text(groups, n)
        row["majority_group"] = groups.index[0] if len(groups) else None
        row["majority_group_share"] = float(groups.iloc[0] / n) if len(groups) else np.nan
        row["smallest_group"] = groups.index[-1] if len(groups) else None
        row["smallest_group_share"] = float(groups.iloc[-1] / n) if len(groups) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eqpo.data.demo.cohort",
        description="Write the synthetic demo cohort (parquet) and its per-dataset summary (CSV).",
    )
    parser.add_argument(
        "--config-json",
        default="{}",
        help="CohortConfig fields as a JSON object, e.g. '{\"n_samples\": 3000}' (default: {})",
    )
    parser.add_argument("--out", required=True, help="output parquet path")
    parser.add_argument("--summary", help="optional CSV path for describe_cohort")
    args = parser.parse_args(argv)
    try:
        raw = json.loads(args.config_json)
    except json.JSONDecodeError as err:
        parser.error(f"--config-json is not valid JSON ({err}): {args.config_json!r}")
    try:
        config = CohortConfig.from_dict(raw)
    except ValueError as err:
        parser.error(f"--config-json: {err}")
    table = make_cohort(config)
    try:
        write_cohort(table, args.out)
    except ImportError as err:
        parser.error(f"cannot write parquet ({err}); install pyarrow")
    except OSError as err:
        parser.error(f"cannot write {args.out}: {err}")
    summary = describe_cohort(table)
    if args.summary:
        try:
            summary.to_csv(args.summary, index=False)
        except OSError as err:
            parser.error(f"cannot write {args.summary}: {err}")
    print(
        f"wrote {len(table)} samples from {len(summary)} datasets to {args.out}"
        + (f"; summary to {args.summary}" if args.summary else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
