"""Read a judge's JSON verdict out of whatever the model wrote; never raises.

Models wrap JSON in code fences or prose, leave trailing commas, use single quotes or Python literals, stop
mid-object, count steps from 1, write numbers as strings ("3", "Step 3") and say "no error" as -1, 0, null
or "none". Each of these is handled here; what cannot be read becomes a `ParseFailure` with the reason, so
the caller can retry and finally fall back to `hard`.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)(?:```|$)", re.DOTALL)
_THINK = re.compile(r"<think>.*?(?:</think>|$)", re.DOTALL | re.IGNORECASE)
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_NUMBER = re.compile(r"-?\d+")
_NO_STEP = {"", "none", "null", "n/a", "na", "no", "no error", "nan", "-"}

_STEP_KEYS = ("first_error_step", "first_error", "error_step", "step", "faulty_step")
_CORRECT_KEYS = ("answer_correct", "correct", "is_correct")
_ANALYSIS_KEYS = ("analysis", "explanation", "reason", "reasoning")
_SUGGESTION_KEYS = ("suggestion", "fix", "correction", "hint")


@dataclass
class Verdict:
    answer_correct: bool | None
    first_error_step: int | None   # 0-based index into the steps; None: the judge names no faulty step
    analysis: str
    suggestion: str


@dataclass
class ParseFailure:
    reason: str


def _without_thinking(text: str) -> str:
    """Reasoning models think aloud in <think> blocks before answering; braces in there are not the answer."""
    return _THINK.sub("", text)


def _candidates(text: str) -> list[str]:
    """Text spans that may hold the JSON object, most likely first: fenced blocks, every object the JSON
    decoder reads whole (so braces in surrounding prose do not matter), then first `{` to last `}` for repair."""
    spans = [m.group(1) for m in _FENCE.finditer(text)]
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            _, end = decoder.raw_decode(text, match.start())
        except ValueError:
            continue
        spans.append(text[match.start():end])
    start = text.find("{")
    if start >= 0:
        end = text.rfind("}")
        spans.append(text[start:end + 1] if end > start else text[start:])
    unique = dict.fromkeys(s.strip() for s in spans if s.strip())
    return list(unique)


def _close_truncated(span: str) -> str:
    """Close an object cut off mid-way: an open string, then open brackets, innermost first."""
    stack, in_string, escaped = [], False, False
    for ch in span:
        if in_string:
            escaped = (ch == "\\") and not escaped
            if ch == '"' and not escaped:
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    body = span.rstrip()
    if in_string:
        body += '"'
    else:
        body = re.sub(r',?\s*"[^"]*"\s*:\s*$', "", body)  # a key whose value never came
        body = re.sub(r",\s*$", "", body)
    return _TRAILING_COMMA.sub(r"\1", body + "".join(reversed(stack)))


def _load(span: str) -> dict | None:
    attempts = [span, _TRAILING_COMMA.sub(r"\1", span), _close_truncated(_TRAILING_COMMA.sub(r"\1", span))]
    for attempt in attempts:
        try:
            value = json.loads(attempt)
        except ValueError:
            pythonic = re.sub(r"\btrue\b", "True", re.sub(r"\bfalse\b", "False", re.sub(r"\bnull\b", "None", attempt)))
            try:
                value = ast.literal_eval(pythonic)
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                continue
        if isinstance(value, dict):
            return value
    return None


def _fields_by_pattern(text: str) -> dict:
    """Last resort for output too broken to load: pick `"key": value` pairs out one by one."""
    found = {}
    for key in (*_STEP_KEYS, *_CORRECT_KEYS):
        match = re.search(rf'["\']?{key}["\']?\s*[:=]\s*("[^"]*"|\'[^\']*\'|-?\d+|true|false|null|none)', text, re.I)
        if match and key not in found:
            found[key] = match.group(1).strip("\"'")
    for key in (*_ANALYSIS_KEYS, *_SUGGESTION_KEYS):
        match = re.search(rf'["\']?{key}["\']?\s*[:=]\s*"((?:[^"\\]|\\.)*)', text, re.I)
        if match and key not in found:
            found[key] = match.group(1)
    return found


def _first(data: dict, keys: tuple[str, ...]):
    lowered = {str(k).lower(): v for k, v in data.items()}
    for key in keys:
        if key in lowered:
            return True, lowered[key]
    return False, None


def _as_bool(value) -> bool | None:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "correct"):
        return True
    if text in ("false", "no", "0", "incorrect", "wrong"):
        return False
    return None


def _as_step(value, n_steps: int) -> tuple[int | None, str | None]:
    """(0-based step or None, error). The prompt numbers steps from 1; -1, 0, null and "none" mean no step."""
    if value is None or isinstance(value, bool):
        return None, None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int):
        number = value
    else:
        text = str(value).strip().lower()
        if text in _NO_STEP:
            return None, None
        match = _NUMBER.search(text)
        if match is None:
            return None, f"first_error_step {value!r} is not a step number"
        number = int(match.group())
    if number <= 0:
        return None, None
    if number > n_steps:
        return None, f"first_error_step {number} is outside the trajectory (steps 1-{n_steps})"
    return number - 1, None


def parse_judgement(text: str, n_steps: int) -> Verdict | ParseFailure:
    """The judge's verdict for a trajectory of `n_steps` steps (numbered 1..n_steps in the prompt)."""
    text = _without_thinking(text or "")
    if not text.strip():
        return ParseFailure("the judge wrote nothing")
    objects = [d for d in map(_load, _candidates(text)) if d is not None]
    # The verdict is the object that names a step; prose may carry other objects (an example, a nested one).
    data = next((d for d in objects if _first(d, _STEP_KEYS)[0]), objects[0] if objects else None)
    if data is None:
        data = _fields_by_pattern(text)
    if not data:
        return ParseFailure("no JSON object found in the judge's output")
    has_step, raw_step = _first(data, _STEP_KEYS)
    if not has_step:
        return ParseFailure("the judge's JSON has no first_error_step")
    step, error = _as_step(raw_step, n_steps)
    if error:
        return ParseFailure(error)
    _, raw_correct = _first(data, _CORRECT_KEYS)
    _, analysis = _first(data, _ANALYSIS_KEYS)
    _, suggestion = _first(data, _SUGGESTION_KEYS)
    return Verdict(
        answer_correct=_as_bool(raw_correct) if raw_correct is not None else None,
        first_error_step=step,
        analysis=str(analysis or "").strip(),
        suggestion=str(suggestion or "").strip(),
    )


def parse_equivalence(text: str) -> tuple[bool | None, str]:
    """(verdict or None when unreadable, reason) from an equivalence reply: JSON, or a plain yes/no."""
    for span in _candidates(_without_thinking(text or "")):
        data = _load(span)
        if data is not None:
            found, value = _first(data, ("equivalent", "same", "equal"))
            _, reason = _first(data, ("reason", "analysis", "explanation"))
            if found and _as_bool(value) is not None:
                return _as_bool(value), str(reason or "").strip()
    word = re.search(r"\b(yes|no|true|false)\b", (text or "").lower())
    if word:
        return word.group(1) in ("yes", "true"), (text or "").strip()[:200]
    return None, "the teacher's reply held no verdict"
