"""Answer scoring: math answers through math-verify (from any thread), text answers by normalised match and F1."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from math_verify import parse

from shared.scoring import MAX_MATH_CHARS, f1_score, normalize_answer, score_answer


@pytest.mark.parametrize("prediction", ["464", "464.0", 464, "$464$", "\\boxed{464}", " 464 "])
@pytest.mark.parametrize("gold", [464, "464", 464.0])
def test_equal_numbers_are_correct(prediction, gold):
    score = score_answer(prediction, gold)
    assert score.correct and score.method == "math"


@pytest.mark.parametrize("prediction", ["465", "-464", "4640", "Quorland", ""])
def test_different_numbers_are_wrong(prediction):
    score = score_answer(prediction, 464)
    assert not score.correct and score.method == "math"


def test_negative_numbers_and_fractions():
    assert score_answer("-742", -742).correct
    assert score_answer("0.5", "1/2").correct
    assert score_answer("\\frac{1}{2}", "$\\frac{1}{2}$").correct
    assert not score_answer("\\frac{1}{3}", "1/2").correct


def test_text_answers_use_normalised_exact_match():
    score = score_answer("The Quorland.", "Quorland")
    assert (score.correct, score.exact_match, score.f1, score.method) == (True, True, 1.0, "exact")


def test_partial_text_answers_are_wrong_but_get_f1():
    score = score_answer("Quorland Republic", "Quorland")
    assert not score.correct and not score.exact_match
    assert score.method == "f1"
    assert score.f1 == pytest.approx(2 / 3)


def test_the_best_alias_wins():
    score = score_answer("new york city", ["NYC", "New York City"])
    assert score.correct and score.exact_match
    assert not score_answer("Boston", ["NYC", "New York City"]).correct


def test_a_missing_prediction_is_wrong():
    score = score_answer(None, "Quorland")
    assert (score.correct, score.exact_match, score.f1, score.method) == (False, False, 0.0, "none")


@pytest.mark.parametrize("bad", [[], {"a": 1}, True])
def test_malformed_gold_answers_are_refused(bad):
    with pytest.raises((ValueError, TypeError)):
        score_answer("x", bad)


def test_normalize_answer_is_squad_style():
    assert normalize_answer("  The Cat's  HAT, an apple! ") == "cats hat apple"
    assert normalize_answer("A") == ""


def test_f1_score():
    assert f1_score("mira kolt", "Mira Kolt") == 1.0
    assert f1_score("kolt", "Mira Kolt") == pytest.approx(2 / 3)
    assert f1_score("velmar", "Mira Kolt") == 0.0
    assert f1_score("the", "a") == 1.0  # both normalise to nothing


def test_plain_math_verify_cannot_run_in_a_thread():
    # Why score_answer disables math-verify's timeouts: its default signal.alarm fails off the main thread.
    errors = []
    thread = threading.Thread(target=lambda: _record_error(errors, lambda: parse("464")))
    thread.start()
    thread.join()
    assert errors and "thread" in str(errors[0])


def _record_error(errors: list, fn) -> None:
    try:
        fn()
    except ValueError as e:
        errors.append(e)


def test_score_answer_works_from_worker_threads():
    cases = [("464.0", 464, True), ("$\\frac{1}{2}$", "0.5", True), ("465", 464, False), ("Velmar", "velmar", True)] * 8
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda case: score_answer(case[0], case[1]).correct, cases))
    assert results == [expected for _, _, expected in cases]


def test_very_long_predictions_are_not_parsed_as_math():
    assert not score_answer("1" * (MAX_MATH_CHARS + 1), 1).correct
    assert score_answer("1", 1).correct


@pytest.mark.parametrize(("prediction", "gold"), [("-464", 464), ("4.64", "464"), ("46.4", 464)])
def test_math_answers_are_not_squad_normalised(prediction, gold):
    # normalize_answer would strip the sign and the point and call these equal.
    score = score_answer(prediction, gold)
    assert (score.correct, score.exact_match, score.f1) == (False, False, 0.0)
