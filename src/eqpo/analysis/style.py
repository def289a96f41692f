"""Shared presentation constants: method order, paper names, fixed colours, model names.

Every table and figure of :mod:`eqpo.analysis` reads these, so a method has the same position,
name and colour everywhere. Colours come from the Okabe-Ito palette (distinguishable under the
common colour-vision deficiencies): EQPO is vermillion (the strongest colour), GRPO the
contrasting blue, EQPO-ND a lighter warm orange (a sibling of EQPO).
"""

from __future__ import annotations

import re

# Order of rows in tables and of entries in legends: baselines first, then ours, then the extra.
METHOD_ORDER: tuple[str, ...] = (
    "grpo",
    "rloo",
    "reinforce_pp",
    "grpo_rs",
    "grpo_dro",
    "eqpo_nd",
    "eqpo_nodemo",
    "eqpo",
    "drpo",
)
# Method key -> name printed in the paper (EQPO = the paper's FairGRPO, EQPO-ND = FairGRPO_ND).
METHOD_LABELS: dict[str, str] = {
    "grpo": "GRPO",
    "rloo": "RLOO",
    "reinforce_pp": "REINFORCE++",
    "grpo_rs": "GRPO+RS",
    "grpo_dro": "GRPO+DRO",
    "eqpo_nd": "EQPO-ND",
    # EQPO with every prompt unlabeled (the authors' paper-era EQPO-ND run: FairGRPO on a training
    # file without demographics); eqpo_nd is the later qoq_med3 estimator.
    "eqpo_nodemo": "EQPO-ND (no-demo file)",
    "eqpo": "EQPO",
    "drpo": "DRPO",
}
# Method key -> fixed hex colour (Okabe-Ito; grey for GRPO+DRO, black for DRPO).
METHOD_COLORS: dict[str, str] = {
    "grpo": "#0072B2",  # blue: the main baseline, contrasting with EQPO
    "rloo": "#56B4E9",  # sky blue
    "reinforce_pp": "#009E73",  # bluish green
    "grpo_rs": "#CC79A7",  # reddish purple
    "grpo_dro": "#7F7F7F",  # grey
    "eqpo_nd": "#E69F00",  # orange
    "eqpo_nodemo": "#F0E442",  # yellow: the other EQPO-ND variant
    "eqpo": "#D55E00",  # vermillion: ours, the strongest colour
    "drpo": "#000000",  # black
}
# Method key -> marker, for plots where colour alone must not carry the method (print in grey).
METHOD_MARKERS: dict[str, str] = {
    "grpo": "s",
    "rloo": "v",
    "reinforce_pp": "P",
    "grpo_rs": "D",
    "grpo_dro": "X",
    "eqpo_nd": "^",
    "eqpo_nodemo": "<",
    "eqpo": "o",
    "drpo": "*",
}
# Methods drawn with a thicker line in line plots (the two the paper compares most).
EMPHASISED_METHODS: frozenset[str] = frozenset({"grpo", "eqpo"})
FALLBACK_COLOR = "#444444"

# Normalised model key (lower case, alphanumerics only) -> name printed in the paper.
_MODEL_LABELS: dict[str, str] = {
    "medgemma4b": "MedGemma-4B",
    "medgemma4bit": "MedGemma-4B",
    "qwen25vl7b": "Qwen2.5-VL-7B",
    "qwen25vl7binstruct": "Qwen2.5-VL-7B",
    "qoqmed38b": "QoQ-Med3-8B",
    "qoqmedvl7b": "QoQ-Med-VL-7B",
}


def _model_key(name: str) -> str:
    """'google/medgemma-4b-it' -> 'medgemma4bit' (basename, lower case, alphanumerics only)."""
    return re.sub(r"[^0-9a-z]", "", str(name).rsplit("/", 1)[-1].lower())


def model_label(name: str) -> str:
    """Paper name of a base model ('medgemma-4b' -> 'MedGemma-4B'); unknown names come back as is.

    Matching ignores case, punctuation and a leading 'org/' (so 'Qwen/Qwen2.5-VL-7B-Instruct' and
    'qwen2_5_vl_7b' both give 'Qwen2.5-VL-7B').
    """
    return _MODEL_LABELS.get(_model_key(name), str(name))


def method_label(method: str) -> str:
    """Paper name of a method key ('grpo_rs' -> 'GRPO+RS'); unknown keys come back unchanged."""
    return METHOD_LABELS.get(method, str(method))


def method_color(method: str) -> str:
    """Fixed hex colour of a method; a dark grey for a method not in :data:`METHOD_COLORS`."""
    return METHOD_COLORS.get(method, FALLBACK_COLOR)


def method_marker(method: str) -> str:
    """Fixed marker of a method; '.' for a method not in :data:`METHOD_MARKERS`."""
    return METHOD_MARKERS.get(method, ".")


def order_methods(methods) -> list[str]:
    """Distinct methods in :data:`METHOD_ORDER` order; unknown ones after, sorted by name."""
    present = list(dict.fromkeys(methods))
    known = [m for m in METHOD_ORDER if m in present]
    return known + sorted((m for m in present if m not in METHOD_ORDER), key=str)
