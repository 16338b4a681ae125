"""Send the hostile-code suite through a running student's `POST /v1/rollouts` and check it is contained.

    python scripts/hostile_probe.py --student-url http://127.0.0.1:8001 [--token T] [--secret S]

Every snippet of tests/sandbox/hostile_snippets.py goes in as a trusted prefix step (replayed with `max_turns: 0`,
the path model-written code takes through the service), followed by `print(1 + 1)`, which must still answer
`2`; the benign snippets must give their exact observations. Then `/health` and a normal rollout must each
answer within 2 s. Prints one line per case and a JSON summary; exit status 1 when anything was not contained
(or the service did not answer), 2 when the service refuses code execution (its sandbox boundary is missing:
the message says why). `--secret` (default: $SCORE_API_TOKEN) must never appear in an observation.
Stdlib only, so it runs from any checkout against any deployment (the compose smoke test calls it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.sandbox.hostile_snippets import BENIGN_CASES, ESCAPED_MARK, HOSTILE_CASES  # noqa: E402

FOLLOW_UP = "print(1 + 1)"
ANSWER_WITHIN_S = 2.0


def call(url: str, token: str | None, body: dict | None = None, timeout: float = 600) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=None if body is None else json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json",
                                              **({"Authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")
    except (OSError, ValueError) as exc:   # refused, timed out, not JSON: the service did not answer
        return 0, {"error": f"{type(exc).__name__}: {exc}"}


def item(name: str, *codes: str) -> dict:
    steps = [{"kind": "plan", "thought": "run the code"}] + [{"kind": "act", "thought": "", "code": c} for c in codes]
    return {"task": {"id": name, "question": "Run the code."}, "prefix_steps": steps}


def observations(episode: dict) -> list[str]:
    return [step.get("observation") or "" for step in episode["steps"][1:]]


def hostile_problems(case, episode: dict, secret: str | None) -> list[str]:
    seen, after = (observations(episode) + ["", ""])[:2]
    text = seen.lower()
    problems = []
    if not any(phrase in text for phrase in case.expect):
        problems.append(f"expected one of {case.expect}")
    if ESCAPED_MARK in text:
        problems.append("something escaped")
    if secret and secret in seen:
        problems.append("the secret leaked")
    if episode.get("final_answer") is not None:
        problems.append(f"final answer {episode['final_answer']!r}")
    if after != "2":
        problems.append(f"the next step gave {after[:80]!r}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student-url", required=True)
    parser.add_argument("--token", default=os.environ.get("SCORE_API_TOKEN"))
    parser.add_argument("--secret", default=os.environ.get("SCORE_API_TOKEN"),
                        help="a value of the service's environment that must never show (default: the token)")
    args = parser.parse_args(argv)
    base = args.student_url.rstrip("/")

    status, ready = call(f"{base}/ready", args.token, timeout=30)
    if status != 200:
        print(f"student not ready ({status}): {json.dumps(ready)[:600]}")
        return 2 if status == 503 and "sandbox" in json.dumps(ready) else 1
    print("sandbox:", json.dumps(ready.get("sandbox")))

    items = [item(c.name, c.code, FOLLOW_UP) for c in HOSTILE_CASES] + [item(c.name, c.code) for c in BENIGN_CASES]
    started = time.monotonic()
    status, body = call(f"{base}/v1/rollouts", args.token, {"items": items, "max_turns": 0})
    if status != 200:
        print(f"POST /v1/rollouts answered {status}: {json.dumps(body)[:600]}")
        return 2 if status == 503 else 1
    episodes = body["episodes"]
    failures = []
    for case, episode in zip(HOSTILE_CASES, episodes):
        problems = hostile_problems(case, episode, args.secret)
        failures += [case.name] if problems else []
        print(f"{'ok  ' if not problems else 'FAIL'} {case.name:32} {'; '.join(problems)} "
              f"{observations(episode)[0][:100]!r}")
    for case, episode in zip(BENIGN_CASES, episodes[len(HOSTILE_CASES):]):
        seen = observations(episode)[0]
        failures += [case.name] if seen != case.observation else []
        print(f"{'ok  ' if seen == case.observation else 'FAIL'} {case.name:32} {seen[:100]!r}")
    suite_s = time.monotonic() - started

    # After the suite: the service still answers, quickly.
    started = time.monotonic()
    health, _ = call(f"{base}/health", None, timeout=ANSWER_WITHIN_S)
    health_s = time.monotonic() - started
    started = time.monotonic()
    status, body = call(f"{base}/v1/rollouts", args.token,
                        {"items": [item("benign", "x = 6 * 7\nfinal_answer_print(x)")], "max_turns": 0},
                        timeout=ANSWER_WITHIN_S)
    rollout_s = time.monotonic() - started
    rollout_ok = status == 200 and body["episodes"][0]["final_answer"] == "42"
    healthy = health == 200 and health_s < ANSWER_WITHIN_S and rollout_ok and rollout_s < ANSWER_WITHIN_S
    summary = {"cases": len(items), "not_contained": failures, "suite_s": round(suite_s, 1),
               "health_status": health, "health_s": round(health_s, 3), "rollout_ok": rollout_ok,
               "rollout_s": round(rollout_s, 3)}
    print(json.dumps(summary))
    return 0 if not failures and healthy else 1


if __name__ == "__main__":
    sys.exit(main())
