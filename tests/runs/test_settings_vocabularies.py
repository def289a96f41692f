"""Each reproduction option's values and default are stated once (eqpo.runs.settings): the schema's
enums and defaults, config.yaml and ReproductionOptions agree with them, and the library functions
accept exactly those values."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
import yaml

from eqpo.core import options as option_values
from eqpo.core.groups import explicit_group
from eqpo.core.metrics import fairness_summary
from eqpo.core.rewards import LabelParser, extract_answer, score_response
from eqpo.runs.settings import ReproductionOptions

REPO = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())["properties"]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
# config key -> (the option's values in run_settings, the ReproductionOptions field)
OPTIONS = {
    ("metrics", "class_set"): (option_values.CLASS_SETS, "class_set"),
    ("metrics", "extraction"): (option_values.EXTRACTIONS, "extraction"),
    ("groups", "definition"): (option_values.GROUP_DEFINITIONS, "group_definition"),
    ("reward", "function"): (option_values.REWARD_FUNCTIONS, "reward"),
    ("reward", "matching"): (option_values.MATCHINGS, "matching"),
}


@pytest.mark.parametrize("block, key", list(OPTIONS))
def test_schema_config_and_options_agree_with_the_one_list(block, key):
    values, field = OPTIONS[(block, key)]
    entry = SCHEMA[block]["properties"][key]
    assert list(entry["enum"]) == list(values)
    default = getattr(ReproductionOptions(), field)
    assert entry["default"] == default == values[0] == CONFIG[block][key]


PREDICTIONS = pd.DataFrame(
    {
        "dataset": ["D"] * 4,
        "labels": [["x"], ["y"], ["x"], ["y"]],
        "prediction": [["x"], ["x"], ["y"], ["y"]],
        "age": [20.0, 60.0, 30.0, 70.0],
        "sex": ["F", "M", "M", "F"],
    }
)


def accepts(key: str, value: str) -> None:
    """Call the library function that reads the option with ``value``."""
    if key == "class_set":
        fairness_summary(PREDICTIONS, class_set=value)
    elif key == "extraction":
        extract_answer(r"\boxed{x}", extraction=value)
    elif key == "definition":
        explicit_group(30.0, "F", ("sex", "age"), definition=value)
    elif key == "function":
        score_response(r"\boxed{x}", ["x"], ["x", "y"], function=value)
    elif key == "matching":
        LabelParser(["x", "y"], matching=value)


@pytest.mark.parametrize("block, key", list(OPTIONS))
def test_the_library_accepts_exactly_the_listed_values(block, key):
    for value in OPTIONS[(block, key)][0]:
        accepts(key, value)
    with pytest.raises(ValueError, match="must be one of"):
        accepts(key, "paper_v2")


def test_the_configured_estimator_options_are_the_librarys_defaults():
    """config.yaml spells out the estimator options it reproduces; make_estimator(method) alone gives
    the same estimator, so a library user gets the pipeline's reproduction."""
    from eqpo.core.advantages import estimator_defaults

    for method, options in CONFIG["estimators"].items():
        defaults = estimator_defaults(method)
        assert {key: defaults[key] for key in options} == options, method
