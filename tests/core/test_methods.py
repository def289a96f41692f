"""The method table (eqpo.core.methods) against what it describes: the schema's method enum and estimator
blocks, the estimator registry, the estimators' behaviour, the paper's data and the figures' style."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from eqpo.analysis.paper import load_paper_table2
from eqpo.analysis.style import method_color, method_label, method_marker
from eqpo.core.advantages import ESTIMATORS, make_estimator
from eqpo.core.methods import (
    BASELINES,
    BIAS_MITIGATED,
    BY_KEY,
    CLUSTERING,
    EMPHASISED,
    METHOD_KEYS,
    METHODS,
    PAPER_NAMES,
    RL_BASELINES,
    get_method,
)
from eqpo.data.export import train_part

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "workflow" / "schemas" / "config.schema.yaml"
SCHEMA = yaml.safe_load(SCHEMA_FILE.read_text())


def test_the_schema_enum_lists_exactly_the_methods_of_the_table():
    enum = SCHEMA["$defs"]["method"]["enum"]
    assert len(enum) == len(set(enum))
    assert set(enum) == set(METHOD_KEYS)


def test_the_schema_has_an_estimator_block_for_every_method():
    assert set(SCHEMA["properties"]["estimators"]["properties"]) == set(METHOD_KEYS)


def test_every_registered_estimator_has_a_record_and_every_record_an_estimator():
    assert set(ESTIMATORS) == set(METHOD_KEYS)
    assert len(METHODS) == len(BY_KEY)  # no key twice


def _unlabeled_batch():
    rng = np.random.default_rng(0)
    prompts = np.repeat(np.arange(12), 4)
    return rng.integers(0, 2, size=48).astype(float), prompts, ["A"] * 48, [None] * 48


@pytest.mark.parametrize("key", METHOD_KEYS)
def test_the_clusters_flag_says_whether_the_estimator_reports_implicit_groups(key):
    est = make_estimator(key)
    est(*_unlabeled_batch())
    stats = est.last_stats()
    assert bool(stats.clusters) == get_method(key).clusters
    assert bool(stats.k) == get_method(key).clusters


def test_only_resampled_methods_train_on_the_resampled_export():
    assert [m.key for m in METHODS if train_part(m.key) == "train_rs"] == ["grpo_rs"]


def test_every_method_name_of_the_papers_table2_has_a_record():
    """Every row of the shipped paper data resolves to a method whose record names it."""
    table = load_paper_table2()
    for method, printed in table.reset_index()[["method", "paper_method"]].itertuples(index=False):
        assert printed in get_method(method).paper_names
    assert PAPER_NAMES["FairGRPO"] == "eqpo" and PAPER_NAMES["FairGRPO_ND"] == "eqpo_nodemo"


def test_baseline_families_and_the_compared_pair():
    assert set(BASELINES) == set(RL_BASELINES) | set(BIAS_MITIGATED) | {"grpo"}
    assert not set(BASELINES) & set(CLUSTERING)
    assert EMPHASISED == ("grpo", "eqpo")


def test_style_reads_the_table_and_tells_every_method_apart():
    assert len({method_color(k) for k in METHOD_KEYS}) == len(METHOD_KEYS)
    assert len({method_marker(k) for k in METHOD_KEYS}) == len(METHOD_KEYS)
    assert len({method_label(k) for k in METHOD_KEYS}) == len(METHOD_KEYS)
    assert [method_color(k) for k in METHOD_KEYS] == [m.color for m in METHODS]
    assert method_label("my_method") == "my_method" and method_marker("my_method") == "."


def test_an_unknown_method_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown method 'fairgrpo'; choose one of"):
        get_method("fairgrpo")
