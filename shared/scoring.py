"""Answer scoring: math-verify for math answers, normalised exact match and F1 for short text answers.

Used by the verify stage, the rewards and the eval, from event loops and worker threads, on answers that
models (or callers) wrote. Scoring is bounded: plain numbers are compared here at once (the common case);
anything math-verify must parse goes to a scorer process (`shared.scoring_pool`) that is killed when it
runs past `SCORE_SCORING_TIMEOUT_S` and holds at most `SCORE_SCORING_MEMORY_BYTES`; an answer that cannot
be compared in that time is not correct. Cheap shape checks (length, bracket depth) refuse the worst
inputs before any process is involved. math-verify's own timeouts use `signal.alarm`, which only works on
the main thread, so they stay off; the process boundary is the limit.
"""

from __future__ import annotations

import asyncio
import re
import string
from decimal import Decimal
from collections import Counter
from typing import Literal

from pydantic import BaseModel, Field

ScoreMethod = Literal["math", "exact", "f1", "none"]

# Longer answers (or gold answers) count only if they equal the gold exactly: math-verify is not asked.
MAX_MATH_CHARS = 1000
# Deeper bracket nesting than this is not a real answer, and recursive parsers pay for every level.
MAX_MATH_NESTING = 32
# Plain decimal numbers are compared exactly here, with no parser and no process.
_PLAIN_NUMBER = re.compile(r"^[-+]?\d{1,40}(\.\d{1,40})?$")

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = set(string.punctuation)
# A gold answer is "math" when it is a number, a fraction or an expression, or carries LaTeX.
_NUMBER = re.compile(r"^[-+]?(\d+(,\d{3})*(\.\d*)?|\.\d+)([eE][-+]?\d+)?%?$")
_EXPRESSION = re.compile(r"^(?=.*\d)[-+*/^().\d\s]+$")
_LATEX_MARKERS = ("\\", "$", "^", "{")


class AnswerScore(BaseModel):
    correct: bool = Field(description="Whether the prediction counts as the gold answer.")
    exact_match: bool = Field(
        description="Exact match with the best alias: SQuAD-normalised for text, whitespace-stripped for math."
    )
    f1: float = Field(
        description="Token F1 of the normalised texts with the best alias, in [0, 1]; for math, 1.0 if correct else 0.0."
    )
    method: ScoreMethod = Field(
        description="What decided `correct`: `math` (math-verify), `exact` (normalised exact match), "
        "`f1` (a text answer that did not match exactly; only the partial F1 is informative), "
        "`none` (no prediction)."
    )


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, drop punctuation and articles, collapse whitespace."""
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def f1_score(prediction: str, gold: str) -> float:
    """Token-level F1 of the normalised strings (1.0 when both normalise to nothing)."""
    pred_tokens, gold_tokens = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    common = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred_tokens), common / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def is_math_answer(gold: str) -> bool:
    text = gold.strip()
    if not text:
        return False
    return bool(_NUMBER.match(text) or _EXPRESSION.match(text)) or any(m in text for m in _LATEX_MARKERS)


def _nesting(text: str) -> int:
    depth = deepest = 0
    for ch in text:
        if ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth = max(0, depth - 1)
    return deepest


def _plain_numbers_equal(prediction: str, gold: str) -> bool | None:
    """Decided without math-verify when both are plain decimals: equal values are equal, and different
    integers are different; None leaves the question to math-verify."""
    pred, ref = prediction.strip(), gold.strip()
    if not (_PLAIN_NUMBER.match(pred) and _PLAIN_NUMBER.match(ref)):
        return None
    if Decimal(pred) == Decimal(ref):
        return True
    if "." not in pred and "." not in ref:
        return False
    return None


def math_verify_equal(prediction: str, gold: str) -> bool:
    """math-verify itself, unbounded: only for a process that can be killed (`shared._scoring_child`)."""
    # Imported here: sympy and latex2sympy add about a second to start-up, and many callers never score math.
    from math_verify import parse, verify

    gold_parsed = parse(gold, parsing_timeout=None)
    pred_parsed = parse(prediction, parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def math_equal(prediction: str, gold: str) -> bool:
    """math-verify equivalence, bounded in time and memory, safe to call from any thread."""
    if max(len(prediction), len(gold)) > MAX_MATH_CHARS or max(_nesting(prediction), _nesting(gold)) > MAX_MATH_NESTING:
        return False
    plain = _plain_numbers_equal(prediction, gold)
    if plain is not None:
        return plain
    from shared.scoring_pool import default_pool

    return default_pool().equal(prediction, gold)


def _gold_strings(true_answer) -> list[str]:
    if isinstance(true_answer, list):
        if not true_answer:
            raise ValueError("true_answer alias list must not be empty")
        return [str(alias) for alias in true_answer]
    if isinstance(true_answer, bool) or not isinstance(true_answer, (str, int, float)):
        raise TypeError(f"true_answer must be a string, a number or a list of strings, got {type(true_answer).__name__}")
    if isinstance(true_answer, float) and true_answer.is_integer():
        return [str(int(true_answer))]  # 464.0 -> "464", which math-verify and exact match both read as intended
    return [str(true_answer)]


def _score_one(prediction: str, gold: str) -> AnswerScore:
    if is_math_answer(gold):
        # SQuAD normalisation drops signs and decimal points ("-4.64" -> "464"), so math compares raw strings,
        # and token overlap means nothing for numbers: f1 is all or nothing.
        exact = prediction.strip() == gold.strip()
        correct = exact or math_equal(prediction, gold)
        return AnswerScore(correct=correct, exact_match=exact, f1=float(correct), method="math")
    exact = normalize_answer(prediction) == normalize_answer(gold)
    return AnswerScore(correct=exact, exact_match=exact, f1=f1_score(prediction, gold), method="exact" if exact else "f1")


def score_answer(prediction: str | None, true_answer) -> AnswerScore:
    """Score a final answer against the gold answer (a string, a number or a list of aliases); best alias wins."""
    golds = _gold_strings(true_answer)
    if prediction is None:
        return AnswerScore(correct=False, exact_match=False, f1=0.0, method="none")
    prediction = str(prediction)
    scores = [_score_one(prediction, gold) for gold in golds]
    return max(scores, key=lambda s: (s.correct, s.exact_match, s.f1))


def _needs_scorer(prediction: str | None, golds: list[str]) -> bool:
    """Whether scoring may wait on a scorer process (the rest is microseconds of string work)."""
    if prediction is None:
        return False
    prediction = str(prediction)
    for gold in golds:
        if not is_math_answer(gold) or prediction.strip() == gold.strip():
            continue
        if max(len(prediction), len(gold)) > MAX_MATH_CHARS:
            continue
        if _plain_numbers_equal(prediction, gold) is None:
            return True
    return False


async def score_answer_async(prediction: str | None, true_answer) -> AnswerScore:
    """`score_answer` for event loops: when a scorer process is needed, the wait happens in a thread."""
    if not _needs_scorer(prediction, _gold_strings(true_answer)):
        return score_answer(prediction, true_answer)
    return await asyncio.to_thread(score_answer, prediction, true_answer)
