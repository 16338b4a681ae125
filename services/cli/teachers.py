"""The teacher of `score demo` and `score experiment`, and the services it needs on loopback.

- `expert`: the built-in suite's scripted solver (always right, no model; what the tests and budgets assume).
- `model`: the built-in teacher model `builtin:teacher-sft` in the teacher service (`--engine transformers`).
- `remote`: the same model served by its own OpenAI-compatible server (`score serve student --model
  builtin:teacher-sft`, a separate process), the teacher service calling it with `--engine openai`: the path a
  GPU deployment takes with vLLM, end to end on CPU.
"""

from __future__ import annotations

from pathlib import Path

TEACHERS = ("expert", "model", "remote")
# The scripted solver by default: the teacher model takes tens of minutes to build on first use and its runs
# exceed the demos' time budgets on a 2-core machine (docs/teacher.md has the figures).
DEFAULT_TEACHER = "expert"
TEACHER_MODEL = "builtin:teacher-sft"
TEACHER_ENGINE = "teacher-engine"  # the remote teacher's OpenAI-compatible server, in the stack's logs and urls

HELP = ("expert: the scripted solver of the built-in suite; model: the built-in teacher model (builtin:teacher-sft, "
        "built on first use) in the teacher service; remote: that model behind its own OpenAI-compatible server, "
        f"called over HTTP (--engine openai). Default: {DEFAULT_TEACHER}")


def prepare_teacher_model(teacher: str, home: Path) -> None:
    """Build the teacher model before the services start, saying so (see services/cli/builtins.py)."""
    from services.cli.builtins import prepare_builtin

    if teacher != "expert":
        prepare_builtin(TEACHER_MODEL, home, "teacher model")


def make_stack(teacher: str, home: Path, ports: dict[str, int] | None = None, model: str = TEACHER_MODEL):
    """The services on loopback for `teacher`: the four services, plus the teacher model's own server for
    `remote`. `model` is the teacher checkpoint of `model` and `remote`."""
    from services.launcher import ServiceStack
    from shared.redis_server import free_port

    if teacher == "expert":
        return ServiceStack(home=home, ports=ports, extra_args={"teacher": ["--engine", "expert"]})
    if teacher == "model":
        return ServiceStack(home=home, ports=ports, extra_args={"teacher": ["--model", model]})
    if teacher != "remote":
        raise ValueError(f"unknown teacher {teacher!r}; choose one of {', '.join(TEACHERS)}")
    taken = set((ports or {}).values())
    port = free_port()
    while port in taken:
        port = free_port()
    # The teacher service loads the same checkpoint's tokenizer locally (token-exact prompts), hence --model.
    engine_url = f"http://127.0.0.1:{port}/v1"
    return ServiceStack(
        home=home, ports=ports,
        engines={TEACHER_ENGINE: ("student", port, ["--model", model])},
        extra_args={"teacher": ["--engine", "openai", "--base-url", engine_url, "--model", model]},
    )
