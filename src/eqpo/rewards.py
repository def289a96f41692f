"""Answer extraction, label parsing and the label-set F1 reward (METHOD.md Section 2).

The same parsing serves training (the reward) and evaluation (the prediction column of the
metrics table), so a model is scored by one definition of "what it answered".
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

_BOX = "\\boxed{"
_TEXT_WRAPPER = re.compile(r"\\text(?:bf|rm|it)?\{([^{}]*)\}")
# Separators, longest first so " and " is not read as a bare space: ", " " and " " & " "," "&".
_SEPARATORS = re.compile(r"\s*,\s*|\s+and\s+|\s*&\s*", flags=re.IGNORECASE)
_STRIP_CHARS = " \t\n\r.;:\"'`*"


def extract_boxed(text: str | None) -> str | None:
    """Content of the LAST ``\\boxed{...}`` in ``text``, braces balanced; None if there is none.

    A last box left unclosed (e.g. a response truncated at max length) counts as no box.
    """
    if not text:
        return None
    start = text.rfind(_BOX)
    if start < 0:
        return None
    depth = 1
    i = start + len(_BOX)
    for j in range(i, len(text)):
        ch = text[j]
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return text[i:j].strip()
    return None


def _normalise(label: str) -> str:
    return " ".join(label.casefold().split())


class LabelParser:
    """Maps free text answers onto one dataset's label vocabulary.

    Matching is case-insensitive with whitespace collapsed; LaTeX ``\\text{...}`` wrappers and
    surrounding quotes or a trailing full stop are ignored. Items that match no label are dropped.
    """

    def __init__(self, vocabulary: Sequence[str]):
        if not vocabulary:
            raise ValueError("LabelParser needs a non-empty label vocabulary")
        self.vocabulary = tuple(vocabulary)
        self._lookup = {_normalise(label): label for label in self.vocabulary}
        if len(self._lookup) != len(self.vocabulary):
            raise ValueError(f"labels collide after case-folding: {self.vocabulary}")

    def parse(self, answer: str | None) -> list[str]:
        """Answer text -> labels of the vocabulary, deduplicated, in vocabulary order."""
        if answer is None:
            return []
        text = _TEXT_WRAPPER.sub(r"\1", answer).strip(_STRIP_CHARS)
        whole = self._lookup.get(_normalise(text))
        if whole is not None:  # a label that itself contains a separator word
            return [whole]
        found = {self._lookup.get(_normalise(item.strip(_STRIP_CHARS))) for item in _SEPARATORS.split(text)}
        return [label for label in self.vocabulary if label in found]


def label_f1(prediction: Iterable[str], truth: Iterable[str]) -> float:
    """Set F1 = 2|P & T| / (|P| + |T|); 0 when both are empty or the prediction is empty."""
    p, t = set(prediction), set(truth)
    if not p or not t:
        return 0.0
    return 2.0 * len(p & t) / (len(p) + len(t))


_THINK_THEN_BOX = re.compile(r"^\s*<think>.*?</think>.*\\boxed\{", flags=re.DOTALL)


def format_ok(response: str | None) -> bool:
    """True when the response reasons in ``<think>...</think>`` and then gives a ``\\boxed{}`` answer."""
    return bool(response) and _THINK_THEN_BOX.search(response) is not None  # type: ignore[arg-type]


@dataclass(frozen=True)
class RewardResult:
    """score in [0, 1]; prediction: parsed labels (empty when unparseable); boxed: raw box content."""

    score: float
    prediction: list[str]
    boxed: str | None
    f1: float
    format_ok: bool

    @property
    def parsed(self) -> bool:
        return bool(self.prediction)


def as_label_list(truth: str | Sequence[str], parser: LabelParser) -> list[str]:
    """Ground truth given as a list of labels or as an answer string ("Edema, Pneumonia")."""
    if isinstance(truth, str):
        labels = parser.parse(truth)
        if not labels:
            raise ValueError(
                f"ground truth {truth!r} matches no label of the vocabulary {list(parser.vocabulary)}"
            )
        return labels
    labels = list(truth)
    unknown = [label for label in labels if label not in parser.vocabulary]
    if unknown:
        raise ValueError(f"ground-truth labels {unknown} are not in the vocabulary {list(parser.vocabulary)}")
    return labels


def score_response(
    response: str | None,
    truth: str | Sequence[str],
    vocabulary: Sequence[str] | LabelParser,
    format_weight: float = 0.0,
) -> RewardResult:
    """Reward of one response: (1 - w) * F1(parsed last box, truth) + w * format_ok.

    With the default ``format_weight`` = 0 this is the paper's accuracy reward: 1/0 for single-label
    tasks, label-set F1 for multi-label ones, 0 for an unparseable answer.
    """
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
    parser = vocabulary if isinstance(vocabulary, LabelParser) else LabelParser(vocabulary)
    boxed = extract_boxed(response)
    prediction = parser.parse(boxed)
    f1 = label_f1(prediction, as_label_list(truth, parser))
    fmt = format_ok(response)
    score = (1.0 - format_weight) * f1 + format_weight * float(fmt)
    return RewardResult(score=score, prediction=prediction, boxed=boxed, f1=f1, format_ok=fmt)


def render_answer(labels: Iterable[str], reasoning: str = "") -> str:
    """A response in the format the prompt asks for: ``<think>..</think>`` then ``\\boxed{A, B}``."""
    return f"<think>{reasoning}</think> \\boxed{{{', '.join(labels)}}}"
