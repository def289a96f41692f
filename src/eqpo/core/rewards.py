"""Answer extraction, label parsing and the rewards (docs/method.md §2; README "Reproduction
defaults vs the paper text").

The same parsing serves training (the reward) and evaluation (the prediction column of the
metrics table), so a model is scored by one definition of "what it answered".

Options (each a config key; their values: eqpo.core.options):

- reward function: ``f1`` (label-set F1), ``exact`` (1 when the whole label set is right, the
  paper text), ``authors_composite`` (0.5 F1 + 0.3 IoU + 0.1 bbox-JSON format score, as the
  authors' fairness runs configured; IoU is 0 for these tasks, which carry no boxes) or
  ``qoq_med3`` (0.5 F1 + 0.2 IoU + 0.1 format + 0.2 Jaccard token overlap, the QoQ-Med3 scripts'
  ``medical_compute_score`` as the qoq_med3 repository has it).
- matching: ``lenient`` (case and whitespace folded, an answer item that names no label is
  dropped) or ``strict`` (as the authors' parser: split on the first separator found, items
  compared exactly after stripping spaces, an item outside the vocabulary is a false positive).
- extraction: ``last_box`` (the last balanced ``\\boxed{}``, as the training reward) or
  ``first_box`` (the authors' evaluator: the first ``\\boxed{...}`` without a closing brace
  inside, else the first ``[...]``, else the whole text).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache

from eqpo.core.options import EXTRACTIONS, MATCHINGS, REWARD_FUNCTIONS

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


_FIRST_BOX = re.compile(r"\\boxed\{([^}]*)\}")
_FIRST_BRACKET = re.compile(r"\[(.*?)\]")
# Weights of the authors' composite reward: label F1, box IoU, bbox-JSON format.
AUTHORS_COMPOSITE_WEIGHTS = {"f1": 0.5, "iou": 0.3, "format": 0.1}
# qoq_med3's medical_compute_score (the QoQ-Med3 scripts' reward, qoq_med3 repository version):
# label F1, box IoU, bbox-JSON format and the Jaccard token overlap of answer and ground truth.
QOQ_MED3_WEIGHTS = {"f1": 0.5, "iou": 0.2, "format": 0.1, "jaccard": 0.2}
_THINK_BLOCK = re.compile(r"<think>.*?</think>", flags=re.DOTALL)


def extract_first_box(text: str | None) -> str | None:
    """The authors' evaluator's answer: the content of the first ``\\boxed{...}`` that has no
    closing brace inside (so ``\\boxed{\\text{A}}`` gives ``\\text{A``), else of the first
    ``[...]``, else the whole text; None only for an empty response."""
    if not text:
        return None
    match = _FIRST_BOX.search(text) or _FIRST_BRACKET.search(text)
    return match.group(1) if match else text


def extract_answer(text: str | None, extraction: str = "last_box") -> str | None:
    """The answer text of a response by ``extraction`` (``last_box`` or ``first_box``)."""
    if extraction == "last_box":
        return extract_boxed(text)
    if extraction == "first_box":
        return extract_first_box(text)
    raise ValueError(f"extraction must be one of {list(EXTRACTIONS)}, got {extraction!r}")


def _normalise(label: str) -> str:
    return " ".join(label.casefold().split())


_AUTHORS_SEPARATORS = (", ", " and ", " & ", ",", "&")


@dataclass(frozen=True)
class ParsedAnswer:
    """labels: the vocabulary labels named, in vocabulary order; unknown: the distinct answer items
    that name no label (sorted)."""

    labels: list[str]
    unknown: list[str]

    @property
    def n_items(self) -> int:
        return len(self.labels) + len(self.unknown)


class LabelParser:
    """Maps free text answers onto one dataset's label vocabulary.

    ``matching="lenient"``: case-insensitive with whitespace collapsed; LaTeX ``\\text{...}``
    wrappers and surrounding quotes or a trailing full stop are ignored; items that match no label
    are dropped from the labels. ``matching="strict"`` (the authors' parser): split on the first of
    ", ", " and ", " & ", ",", "&" that occurs, strip spaces, compare exactly (case-sensitive); an
    item that is not a label stays an item (a false positive for the F1 reward).
    """

    def __init__(self, vocabulary: Sequence[str], matching: str = "lenient"):
        if not vocabulary:
            raise ValueError("LabelParser needs a non-empty label vocabulary")
        if matching not in MATCHINGS:
            raise ValueError(f"matching must be one of {list(MATCHINGS)}, got {matching!r}")
        self.matching = matching
        self.vocabulary = tuple(vocabulary)
        self._lookup = {_normalise(label): label for label in self.vocabulary}
        if len(self._lookup) != len(self.vocabulary):
            raise ValueError(f"labels collide after case-folding: {self.vocabulary}")

    def parse(self, answer: str | None) -> list[str]:
        """Answer text -> labels of the vocabulary, deduplicated, in vocabulary order."""
        return self.parse_items(answer).labels

    def parse_items(self, answer: str | None) -> ParsedAnswer:
        """Answer text -> the labels it names and the items that name no label."""
        if answer is None:
            return ParsedAnswer([], [])
        if self.matching == "strict":
            return self._parse_strict(answer)
        text = _TEXT_WRAPPER.sub(r"\1", answer).strip(_STRIP_CHARS)
        whole = self._lookup.get(_normalise(text))
        if whole is not None:  # a label that itself contains a separator word
            return ParsedAnswer([whole], [])
        found, unknown = set(), set()
        for item in _SEPARATORS.split(text):
            key = _normalise(item.strip(_STRIP_CHARS))
            if key in self._lookup:
                found.add(self._lookup[key])
            elif key:
                unknown.add(key)
        return ParsedAnswer([label for label in self.vocabulary if label in found], sorted(unknown))

    def _parse_strict(self, answer: str) -> ParsedAnswer:
        text = answer.replace("\\boxed{", "").replace("}", "")
        separator = next((sep for sep in _AUTHORS_SEPARATORS if sep in text), None)
        items = {item.strip() for item in (text.split(separator) if separator else [text])}
        return ParsedAnswer(
            [label for label in self.vocabulary if label in items], sorted(items - set(self.vocabulary))
        )


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


@lru_cache(maxsize=4096)  # the parse attempts cost ~0.2 ms; rollouts repeat answers often
def bbox_format_score(response: str | None) -> float:
    """Format term of the authors' composite reward, in [0, 1]: how well the response carries a
    JSON list of ``{"bbox_2d": [x1, y1, x2, y2], "label": ...}`` objects.

    +0.2 for a code fence, +0.1 more when it is marked ``json``; the fenced block (else the whole
    response) then earns +0.2 if it parses as JSON or +0.1 if it parses only as a Python literal
    (single quotes turned into double quotes), +0.1 if that value is a list, and +0.4 times the
    share of its items that are objects with ``label`` and a 4-number ``bbox_2d``.
    """
    import ast
    import json

    if not response:
        return 0.0
    score = 0.0
    if "```" in response:
        score += 0.2
        if "```json" in response:
            score += 0.1
    block = response
    lines = response.splitlines()
    for i, line in enumerate(lines):
        if line == "```json" or line.strip() == "```":
            block = "\n".join(lines[i + 1 :]).split("```")[0]
            break
    if not block:
        return score
    try:
        value = json.loads(block)
        score += 0.2
    except ValueError:
        try:
            value = ast.literal_eval(block.replace("'", '"'))
            score += 0.1
        except Exception:
            return score
    if not isinstance(value, list):
        return score
    score += 0.1
    if value:
        valid = sum(1 for item in value if isinstance(item, dict) and "label" in item and _is_box(item.get("bbox_2d")))
        score += 0.4 * valid / len(value)
    return score


def jaccard_tokens(answer: str | None, truth: str) -> float:
    """Jaccard overlap of the lower-cased whitespace tokens of ``answer`` (``<think>`` blocks
    removed) and ``truth``, as qoq_med3's ``jaccard_similarity``; 0 for no answer, 1 when both are
    empty."""
    if answer is None:
        return 0.0
    pred = set(_THINK_BLOCK.sub("", answer).strip().lower().split())
    true = set(truth.lower().split())
    if not pred and not true:
        return 1.0
    if not pred or not true:
        return 0.0
    return len(pred & true) / len(pred | true)


def _is_box(value: object) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 4
        and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in value)
    )


@dataclass(frozen=True)
class RewardResult:
    """score; prediction: parsed labels (empty when unparseable); boxed: raw answer text; f1: label
    F1 (answer items outside the vocabulary count as false positives under strict matching);
    unknown: the answer items that name no label."""

    score: float
    prediction: list[str]
    boxed: str | None
    f1: float
    format_ok: bool
    unknown: tuple[str, ...] = ()

    @property
    def n_items(self) -> int:
        return len(self.prediction) + len(self.unknown)

    @property
    def parsed(self) -> bool:
        return bool(self.prediction)


def as_label_list(truth: str | Sequence[str], parser: LabelParser) -> list[str]:
    """Ground truth given as a list of labels or as an answer string ("Edema, Pneumonia")."""
    if isinstance(truth, str):
        labels = parser.parse(truth)
        if not labels:
            raise ValueError(f"ground truth {truth!r} matches no label of the vocabulary {list(parser.vocabulary)}")
        return labels
    labels = list(truth)
    unknown = [label for label in labels if label not in parser.vocabulary]
    if unknown:
        raise ValueError(f"ground-truth labels {unknown} are not in the vocabulary {list(parser.vocabulary)}")
    return labels


def answer_f1(parsed: ParsedAnswer, truth: Iterable[str], strict: bool) -> float:
    """Label-set F1 of a parsed answer; with ``strict`` its unknown items are false positives."""
    t = set(truth)
    p = set(parsed.labels)
    n_pred = len(p) + (len(parsed.unknown) if strict else 0)
    if not n_pred or not t:
        return 0.0
    return 2.0 * len(p & t) / (n_pred + len(t))


def score_response(
    response: str | None,
    truth: str | Sequence[str],
    vocabulary: Sequence[str] | LabelParser,
    format_weight: float = 0.0,
    function: str = "f1",
    matching: str = "lenient",
    extraction: str = "last_box",
) -> RewardResult:
    """Reward of one response to one prompt.

    ``function``: ``f1`` -> (1 - w) * F1 + w * format_ok; ``exact`` -> (1 - w) * [answer set ==
    true set] + w * format_ok; ``authors_composite`` -> 0.5 F1 + 0.3 IoU + 0.1 bbox_format_score
    (IoU = 0: these tasks carry no boxes; ``format_weight`` must be 0); ``qoq_med3`` -> 0.5 F1 +
    0.2 IoU + 0.1 bbox_format_score + 0.2 :func:`jaccard_tokens` of the answer text and the ground
    truth ("A, B"), the QoQ-Med3 scripts' ``medical_compute_score`` in its qoq_med3 version. ``matching`` is used when
    ``vocabulary`` is a label list (a :class:`LabelParser` brings its own); under ``strict`` an
    answer item outside the vocabulary is a false positive (F1) and makes ``exact`` 0.
    ``extraction``: which part of the response is the answer (``last_box`` as the training reward).

    With the defaults this is label-set F1: 1/0 for single-label tasks, 0 for an unparseable answer.
    """
    if not 0.0 <= format_weight <= 1.0:
        raise ValueError(f"format_weight must be in [0, 1], got {format_weight}")
    if function not in REWARD_FUNCTIONS:
        raise ValueError(f"reward function must be one of {list(REWARD_FUNCTIONS)}, got {function!r}")
    if function in ("authors_composite", "qoq_med3") and format_weight:
        raise ValueError(f"format_weight applies to the f1 and exact rewards; {function} has its own format term")
    parser = vocabulary if isinstance(vocabulary, LabelParser) else LabelParser(vocabulary, matching)
    strict = parser.matching == "strict"
    boxed = extract_answer(response, extraction)
    parsed = parser.parse_items(boxed)
    labels = as_label_list(truth, parser)
    f1 = answer_f1(parsed, labels, strict)
    fmt = format_ok(response)
    if function == "authors_composite":
        score = AUTHORS_COMPOSITE_WEIGHTS["f1"] * f1 + AUTHORS_COMPOSITE_WEIGHTS["format"] * bbox_format_score(response)
    elif function == "qoq_med3":
        text = truth if isinstance(truth, str) else ", ".join(truth)
        score = (
            QOQ_MED3_WEIGHTS["f1"] * f1
            + QOQ_MED3_WEIGHTS["format"] * bbox_format_score(response)
            + QOQ_MED3_WEIGHTS["jaccard"] * jaccard_tokens(boxed, text)
        )
    else:
        if function == "exact":
            base = float(bool(parsed.labels) and set(parsed.labels) == set(labels) and not (strict and parsed.unknown))
        else:
            base = f1
        score = (1.0 - format_weight) * base + format_weight * float(fmt)
    return RewardResult(
        score=score, prediction=parsed.labels, boxed=boxed, f1=f1, format_ok=fmt, unknown=tuple(parsed.unknown)
    )


def render_answer(labels: Iterable[str], reasoning: str = "") -> str:
    """A response in the format the prompt asks for: ``<think>..</think>`` then ``\\boxed{A, B}``."""
    return f"<think>{reasoning}</think> \\boxed{{{', '.join(labels)}}}"
