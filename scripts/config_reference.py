"""Write docs/configuration.md from the settings models, so the reference cannot drift from the code.

    .venv/bin/python scripts/config_reference.py          # rewrite docs/configuration.md
    .venv/bin/python scripts/config_reference.py --check  # exit 1 if it is out of date (the tests run this)

Every field must carry a description; a field without one fails the script, naming it.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import types
import typing
from enum import Enum
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "configuration.md"
sys.path.insert(0, str(ROOT))


def _settings_sections():
    from services.coordinator.config import CoordinatorConfig
    from services.student.config import StudentConfig
    from services.teacher.config import TeacherConfig
    from services.trainer.config import TrainerConfig
    from shared.settings import Settings

    return [
        ("Every service and the CLI", Settings, "`score up`, `score demo` and each `score serve` read these."),
        ("Coordinator", CoordinatorConfig, "`score serve coordinator`: its stage-worker processes. It refuses to "
         "start without `SCORE_REDIS_URL` (`score up` and `score demo` set it)."),
        ("Student", StudentConfig, "`score serve student`; the flags `--model`, `--engine`, `--base-url`, "
         "`--served-model-name` and `--device` win over these."),
        ("Teacher", TeacherConfig, "`score serve teacher`; the same flags win over these (the teacher also takes "
         "`--engine expert`)."),
        ("Trainer", TrainerConfig, "`score serve trainer`; `--device` wins over `SCORE_TRAINER_DEVICE`."),
    ]


def type_name(annotation) -> str:
    """A short, readable type: `int`, `str | null`, `"verify" | "judge"`, `list["arith" | "kb"]`."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return " | ".join(f'"{a}"' if isinstance(a, str) else repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin in (list, tuple, set):
        return f"list[{type_name(args[0])}]" if args else "list"
    if origin is dict:
        return f"object[{type_name(args[0])}, {type_name(args[1])}]" if args else "object"
    if annotation is type(None):
        return "null"
    if isinstance(annotation, type):
        if issubclass(annotation, Enum):
            return " | ".join(f'"{m.value}"' for m in annotation)
        return {"str": "string", "bool": "boolean", "PosixPath": "path", "Path": "path"}.get(
            annotation.__name__, annotation.__name__)
    return str(annotation).replace("typing.", "")


def show_default(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return f"`{str(value).replace(str(Path.home()), '~')}`"
    if isinstance(value, Enum):
        value = value.value
    if dataclasses.is_dataclass(value) or isinstance(value, BaseModel):
        return "see below"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, float):
        return f"`{value:g}`"
    if isinstance(value, str):
        return f'`"{value}"`' if value else '`""`'
    return f"`{value!r}`".replace("'", '"')


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _fields(model) -> dict:
    """(name -> FieldInfo) of a pydantic model or pydantic dataclass."""
    return model.model_fields if isinstance(model, type) and issubclass(model, BaseModel) \
        else model.__pydantic_fields__


def _nested_type(annotation):
    """The model a field holds (directly or optionally), if any: documented as a section of its own."""
    candidates = [annotation, *typing.get_args(annotation)]
    for candidate in candidates:
        if isinstance(candidate, type) and (issubclass(candidate, BaseModel) or dataclasses.is_dataclass(candidate)):
            return candidate
    return None


def rows(model, default_instance, prefix: str, missing: list[str], *, env_prefix: str | None = None,
         shared: dict[type, str] | None = None) -> list[str]:
    """Table rows for `model`'s fields, flattening nested models into dotted names (`rl.hyperparameters.clip`).

    Models in `shared` (type -> section title) are used in several places: they get one table of their own."""
    shared = shared or {}
    out = []
    for name, field in _fields(model).items():
        if field.exclude:
            continue
        dotted = f"{prefix}{name}"
        if not field.description:
            missing.append(f"{model.__name__}.{name}")
        default = getattr(default_instance, name) if default_instance is not None else \
            field.get_default(call_default_factory=True)
        nested = _nested_type(field.annotation)
        key = f"`{env_prefix}{name.upper()}`" if env_prefix is not None else f"`{dotted}`"
        if nested is not None and env_prefix is None and nested not in shared:
            out.extend(rows(nested, default, f"{dotted}.", missing, shared=shared))
            continue
        if nested is not None and nested in shared:
            kind = f"object: {shared[nested]}"
            if default is not None and default != nested():
                missing.append(f"{model.__name__}.{name} (a shared table cannot show its own defaults)")
        else:
            kind = "JSON object (see below)" if nested is not None else type_name(field.annotation)
        out.append(f"| {key} | {_cell(kind)} | {show_default(default)} | {_cell(field.description or '')} |")
    return out


def render() -> str:
    from shared.schemas.run_config import RunConfig
    from shared.schemas.training import SFTHyperparameters
    from shared.sandbox.limits import SandboxLimits

    missing: list[str] = []
    lines = [
        "# Configuration reference",
        "",
        "Generated from the settings models by `scripts/config_reference.py`; edit the models' field descriptions, "
        "then rerun it. The tests fail when this file is out of date.",
        "",
        "## Environment variables",
        "",
        "Each service reads its settings from the environment when it starts. Unset variables take the default, "
        "which works as is on a CPU machine with the built-in tiny models. Values are parsed by pydantic: numbers "
        "and booleans as text, objects as JSON.",
        "",
    ]
    for title, model, note in _settings_sections():
        env_prefix = model.model_config.get("env_prefix", "")
        lines += [f"### {title}", "", note, "", "| variable | type | default | description |", "|---|---|---|---|"]
        lines += rows(model, None, "", missing, env_prefix=env_prefix)
        lines.append("")
    lines += [
        "### Sandbox limits",
        "",
        "`SCORE_STUDENT_SANDBOX` and `SCORE_TEACHER_SANDBOX` take a JSON object with any of these keys, e.g. "
        '`{"step_timeout_s": 10}`.',
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
        *rows(SandboxLimits, SandboxLimits(), "", missing),
        "",
        "## Run config",
        "",
        "The body of `POST /v1/runs`, or the YAML/JSON file given to `score run CONFIG`. Every field has a default, "
        "so `{}` is a valid run on the built-in suite; the defaults are the paper's settings. Nested fields are "
        "written with dots here and nested objects in the file (`rl.hyperparameters.clip_ratio` is "
        "`{\"rl\": {\"hyperparameters\": {\"clip_ratio\": 0.2}}}`); a 422 names the field the same way.",
        "",
        "| field | type | default | description |",
        "|---|---|---|---|",
        *rows(RunConfig, RunConfig(), "", missing, shared={SFTHyperparameters: "SFT hyperparameters"}),
        "",
        "### SFT hyperparameters",
        "",
        "`bc_init.hyperparameters`, `sft.hyperparameters` and `baseline.hyperparameters` (and the trainer's "
        "`POST /v1/jobs` body) take these keys.",
        "",
        "| key | type | default | description |",
        "|---|---|---|---|",
        *rows(SFTHyperparameters, SFTHyperparameters(), "", missing),
        "",
    ]
    if missing:
        raise SystemExit("fields without a description: " + ", ".join(missing))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/configuration.md is out of date")
    args = parser.parse_args()
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.exists() else ""
        if current != text:
            print(f"{OUTPUT.relative_to(ROOT)} is out of date: run `.venv/bin/python scripts/config_reference.py`",
                  file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text)
    print(f"wrote {OUTPUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
