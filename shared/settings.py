"""Typed settings from the environment (prefix `SCORE_`), shared by every service and the CLI."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.models.engine import KVCacheKind
from shared.sandbox.limits import SandboxLimits

DEFAULT_PORTS = {"coordinator": 8000, "student": 8001, "teacher": 8002, "trainer": 8003}


class Settings(BaseSettings):
    """Where things live and how services reach each other. Every field reads `SCORE_<NAME>`."""

    model_config = SettingsConfigDict(env_prefix="SCORE_", extra="ignore", env_ignore_empty=True)

    home: Path = Field(
        default=Path.home() / ".score",
        description="Data directory: built-in models, checkpoints, runs. Shared by all services.",
    )
    redis_url: str | None = Field(
        default=None, description="Redis URL. Unset: `score up`/`score demo` start an embedded server."
    )
    api_token: str | None = Field(
        default=None, repr=False,  # kept out of validation errors that echo a config holding these settings
        description="When set, every endpoint but /health requires `Authorization: Bearer <token>`.",
    )
    coordinator_url: str = Field(
        default=f"http://127.0.0.1:{DEFAULT_PORTS['coordinator']}",
        description="Base URL of the coordinator service, as the other services and the CLI reach it.",
    )
    student_url: str = Field(
        default=f"http://127.0.0.1:{DEFAULT_PORTS['student']}",
        description="Base URL of the student service, as the other services and the CLI reach it.",
    )
    teacher_url: str = Field(
        default=f"http://127.0.0.1:{DEFAULT_PORTS['teacher']}",
        description="Base URL of the teacher service, as the other services and the CLI reach it.",
    )
    trainer_url: str = Field(
        default=f"http://127.0.0.1:{DEFAULT_PORTS['trainer']}",
        description="Base URL of the trainer service, as the other services and the CLI reach it.",
    )
    allowed_paths: list[Path] = Field(
        default_factory=list,
        description="Directories besides SCORE_HOME from which requests and run configs may name task files, "
        "datasets and model checkpoints (JSON list, e.g. `[\"/datasets\"]`). Everything else is refused.",
    )
    max_body_bytes: int = Field(
        default=32 * 2**20, ge=1024, le=2**31,
        description="Largest request body any service reads (413 above it); checked after the bearer token and "
        "before parsing.",
    )
    max_task_file_bytes: int = Field(
        default=64 * 2**20, ge=1024, le=2**34,
        description="Largest task file (JSONL) or dataset file a request may name (422 above it).",
    )
    scoring_workers: int = Field(
        default=2, ge=1, le=64,
        description="Scorer processes per service process for math answers (math-verify); one call each at a time.",
    )
    scoring_timeout_s: float = Field(
        default=5.0, gt=0, le=60,
        description="Longest one math-answer comparison may take; past it the scorer is killed and the answer "
        "counts as not correct.",
    )
    scoring_memory_bytes: int = Field(
        default=2**30, ge=256 * 2**20, le=2**36,
        description="Address-space limit (RLIMIT_AS) of each scorer process.",
    )
    log_level: str = Field(default="info", description="Logging level of the services.")
    sandbox_unconfined: bool = Field(
        default=False, description="Trusted development only: run model-written code WITHOUT the bubblewrap boundary "
        "(in-process layers only) where the host cannot provide it. Logged loudly at start; never in production.")
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="Service log lines: `text` (key=value: service, request_id, run_id, stage, item, logger, message) "
        "or `json` (one JSON object per line with the same keys).",
    )

    @field_validator("api_token")
    @classmethod
    def _no_placeholder_token(cls, value: str | None) -> str | None:
        if value is None or value == "":
            return None
        if value.lower() in {"changeme", "change-me", "secret", "token", "password"} or len(value) < 8:
            raise ValueError("SCORE_API_TOKEN is a placeholder or shorter than 8 characters; set a real secret")
        return value

    @property
    def path_roots(self) -> list[Path]:
        """Where files named in requests may live: SCORE_HOME and the operator's `allowed_paths`."""
        return [self.home, *self.allowed_paths]

    @property
    def checkpoints_dir(self) -> Path:
        return self.home / "checkpoints"

    @property
    def runs_dir(self) -> Path:
        return self.home / "runs"


class ModelServiceConfig(BaseSettings):
    """What the student and teacher services share: where the model comes from, and the sandboxes that run
    its code. Subclasses set the environment prefix (`SCORE_STUDENT_`, `SCORE_TEACHER_`) and their engines."""

    model_config = SettingsConfigDict(extra="ignore", env_ignore_empty=True, protected_namespaces=())

    model: str | None = Field(
        default=None, description="Model reference for the model engines: `builtin:<role>`, a published checkpoint "
        "series `name` (its latest version), `name/vN`, or a checkpoint directory; unset: the built-in tiny model of "
        "the service's role, built on first use under SCORE_HOME.")
    base_url: str | None = Field(
        default=None, description="The OpenAI-compatible server for engine `openai`, e.g. http://vllm-student:8000/v1: "
        "that engine needs it, the others refuse it.")
    served_model_name: str | None = Field(
        default=None, description="The model's name on that server (and in the student's /v1/models, the teacher's "
        "/ready); unset: the model reference as given (a directory by its folder name; the student without one: "
        "`score-student`), or the server's first model.")
    device: str | None = Field(default=None, description="`cpu` or `cuda` for engine `transformers`; unset: cuda "
                               "when available.")
    max_batch_size: int = Field(default=64, ge=1, description="Most generations batched together (transformers).")
    prefix_cache_mb: float = Field(
        default=256.0, ge=0.0, le=1_048_576.0,
        description="Memory for KV states kept between an episode's turns (transformers), so a turn prefills only "
        "its new tokens (vLLM's prefix caching); least recently used prefixes are evicted beyond it; 0: off. Seeded "
        "samples are the same either way. 256 holds the live episodes of 64 concurrent rollouts of the built-in "
        "students; a full `score demo` took 805 s with it and 932 s without (mentored problem solving 1.31x "
        "faster), same outcomes, 0.13 GB more student memory (docs/student.md).")
    kv_cache: KVCacheKind = Field(
        default="slots", description="KV cache layout of the decode loop (transformers): `slots`, preallocated "
        "per-row slots written in place each step (shared/models/kv_slots.py); `legacy`, a transformers "
        "DynamicCache grown by concatenation, kept for side-by-side measurements. Same samples either way.")
    max_concurrent_episodes: int = Field(
        default=64, ge=1, description="Agent episodes in flight, one sandboxed interpreter process each.")
    search_corpus: str | None = Field(
        default=None, description="JSONL file of {id, title, text} for the `search` tool; unset: the built-in "
        "knowledge base.")
    episode_timeout_s: float = Field(
        default=300.0, gt=0, le=86400,
        description="Wall-clock limit of one agent episode, prefix replay included; an episode past it ends with "
        "stop_reason `timeout` and what it has so far.",
    )
    sandbox: SandboxLimits = Field(
        default_factory=SandboxLimits, description="Limits of the sandboxed interpreter (JSON object).")
    sandbox_ready: int = Field(
        default=4, ge=0, le=64, description="Sandboxed interpreters kept started ahead of need, so an episode, "
        "replay or check does not wait ~0.1-0.2 s for one to start; each serves one episode only. 0: start on demand.")
    settings: Settings = Field(default_factory=Settings, description="Shared settings (SCORE_HOME, token, ...).",
                               exclude=True)

    @model_validator(mode="after")
    def _base_url_with_openai_only(self) -> "ModelServiceConfig":
        # `engine` is each subclass's own field (the teacher has one more engine than the student).
        where = f"{self.model_config.get('env_prefix', '')}BASE_URL, --base-url"
        if self.engine == "openai" and not self.base_url:
            raise ValueError(f"base_url is unset ({where}): engine openai needs an OpenAI-compatible server, "
                             "e.g. http://vllm:8000/v1")
        if self.engine != "openai" and self.base_url:
            raise ValueError(f"base_url ({where}) applies only to engine openai, not {self.engine}")
        return self


def _origin(url: str) -> tuple[str, str, int | None] | None:
    try:
        parts = urlsplit(url)
        port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
    except ValueError:  # a port that is not a number
        return None
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def is_configured_service_url(url: str, settings: Settings) -> bool:
    """Whether `url` has the origin (scheme, host, port) of one of the configured model service URLs: the
    only places the coordinator sends the API token."""
    configured = {_origin(u) for u in (settings.student_url, settings.teacher_url, settings.trainer_url)}
    origin = _origin(url)
    return origin is not None and origin in configured


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings read once per process (tests build `Settings(...)` directly instead)."""
    return Settings()


def given_flags(args, *names: str) -> dict:
    """The command-line flags among `names` that were given: they win over a service's `SCORE_<SERVICE>_*`
    environment variables, and flags left out must not mask those variables with None."""
    return {name: value for name in names if (value := getattr(args, name, None)) is not None}


def describe_invalid(exc: ValidationError) -> str:
    """A settings error as one line per problem, each naming its field, for a command line's `error:`. The
    input values stay out: they may hold the API token."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        field = ".".join(str(part) for part in error["loc"])
        lines.append(f"{field}: {message}" if field else message)
    return "\n".join(lines)
