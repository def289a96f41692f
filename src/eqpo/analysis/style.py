"""Shared presentation constants: method order, names, fixed colours and markers, model names.

Every table and figure of :mod:`eqpo.analysis` reads these, so a method has the same position,
name and colour everywhere; the method attributes are views of :data:`eqpo.core.methods.METHODS`.
"""

from __future__ import annotations

import re

from eqpo.core.methods import EMPHASISED, METHOD_KEYS, METHODS

# Every method attribute comes from the one method table (eqpo.core.methods); these are views of it.
METHOD_ORDER: tuple[str, ...] = METHOD_KEYS  # rows of tables, entries of legends
METHOD_LABELS: dict[str, str] = {m.key: m.label for m in METHODS}
METHOD_COLORS: dict[str, str] = {m.key: m.color for m in METHODS}
METHOD_MARKERS: dict[str, str] = {m.key: m.marker for m in METHODS}
# Methods drawn with a thicker line in line plots (the two the paper compares most).
EMPHASISED_METHODS: frozenset[str] = frozenset(EMPHASISED)
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
