"""One fallback for the `train` length keys, equal to config.yaml's values, for every backend."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from eqpo.runs.settings import TRAIN_LENGTH_DEFAULTS, train_length

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[2] / "config.yaml").read_text())


@pytest.mark.parametrize("key", ["max_prompt_length", "max_response_length"])
def test_a_partial_train_block_gets_config_yamls_length(key):
    assert train_length({}, key) == CONFIG["train"][key] == TRAIN_LENGTH_DEFAULTS[key]
    assert train_length({key: 16}, key) == 16


def test_the_memory_plan_uses_it():
    from eqpo.backends.verl import memory_plan

    # the memory plan's token budget per GPU: twice prompt + response, from the one fallback
    assert memory_plan.max_token_len_per_gpu({}) == 2 * (4096 + 4096)
    assert memory_plan.max_token_len_per_gpu({"max_prompt_length": 100, "max_response_length": 28}) == 256
