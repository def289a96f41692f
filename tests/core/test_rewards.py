"""Answer extraction, label parsing and the F1 reward."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eqpo.core.rewards import LabelParser, extract_boxed, label_f1, render_answer, score_response
from eqpo.core.vocabularies import CHEXPERT_LABELS, PAPER_DATASETS, DatasetSpec, get_spec

SKIN = PAPER_DATASETS["HAM10000"].labels


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"<think>x</think> \boxed{Nevus}", "Nevus"),
        (r"\boxed{Nevus} then \boxed{Melanoma}", "Melanoma"),  # the last box counts
        (r"\boxed{\text{Basal Cell Carcinoma}}", r"\text{Basal Cell Carcinoma}"),  # braces balanced
        (r"\boxed{ a {b} c }", "a {b} c"),
        (r"\boxed{Nevus", None),  # truncated: no closed box
        ("Nevus", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "answer, expected",
    [
        ("Edema, Pneumonia", ["Edema", "Pneumonia"]),
        ("pneumonia and  EDEMA", ["Edema", "Pneumonia"]),  # case-folded, vocabulary order
        ("Edema & Pneumonia,Fracture", ["Edema", "Pneumonia", "Fracture"]),
        ("Edema&Edema", ["Edema"]),
        (r"\text{Support Devices}.", ["Support Devices"]),
        ("Cardiomegaly, Banana", ["Cardiomegaly"]),  # unknown items dropped
        ("Banana", []),
        ("", []),
        (None, []),
    ],
)
def test_label_parser(answer, expected):
    assert LabelParser(CHEXPERT_LABELS).parse(answer) == expected


def test_label_containing_a_separator_word_matches_whole():
    parser = LabelParser(["Cuts and Bruises", "Burns"])
    assert parser.parse("cuts and bruises") == ["Cuts and Bruises"]
    assert parser.parse("Burns, Cuts and Bruises") == ["Burns"]  # split items are matched one by one


def test_label_f1():
    assert label_f1(["A"], ["A"]) == 1.0
    assert label_f1(["A"], ["B"]) == 0.0
    assert label_f1(["A", "B"], ["A"]) == pytest.approx(2 / 3)
    assert label_f1([], ["A"]) == 0.0
    assert label_f1([], []) == 0.0


def test_score_response_single_and_multi_label():
    r = score_response(r"<think>look</think>\boxed{melanoma}", "Melanoma", SKIN)
    assert (r.score, r.prediction, r.parsed, r.format_ok) == (1.0, ["Melanoma"], True, True)
    r = score_response("I think Nevus", ["Melanoma"], SKIN)
    assert (r.score, r.prediction, r.parsed) == (0.0, [], False)
    r = score_response(r"\boxed{Edema, Fracture}", "Edema, Pneumonia", CHEXPERT_LABELS)
    assert r.score == pytest.approx(0.5) and r.prediction == ["Edema", "Fracture"]


def test_format_term_is_off_by_default_and_weighted_when_on():
    no_think = r"\boxed{Nevus}"
    assert score_response(no_think, "Nevus", SKIN).score == 1.0
    assert score_response(no_think, "Nevus", SKIN, format_weight=0.2).score == pytest.approx(0.8)
    with pytest.raises(ValueError, match="format_weight"):
        score_response(no_think, "Nevus", SKIN, format_weight=2)


def test_bad_ground_truth_is_reported():
    with pytest.raises(ValueError, match="matches no label"):
        score_response(r"\boxed{Nevus}", "Psoriasis", SKIN)
    with pytest.raises(ValueError, match="not in the vocabulary"):
        score_response(r"\boxed{Nevus}", ["Psoriasis"], SKIN)


@given(st.sampled_from(sorted(PAPER_DATASETS)), st.data())
def test_rendered_answers_round_trip(name, data):
    spec = get_spec(name)
    size = st.integers(1, len(spec.labels)) if spec.multi_label else st.just(1)
    labels = data.draw(st.lists(st.sampled_from(spec.labels), min_size=1, max_size=data.draw(size), unique=True))
    result = score_response(render_answer(labels, "reasoning"), labels, spec.labels)
    assert result.score == 1.0
    assert set(result.prediction) == set(labels)


def test_dataset_specs_are_validated():
    with pytest.raises(KeyError, match="known"):
        get_spec("MIMIC")
    with pytest.raises(ValueError, match="unknown demographic"):
        DatasetSpec("x", ("a",), False, ("race",))
    assert PAPER_DATASETS["VinDr-Mammo"].attributes == ("age",)
