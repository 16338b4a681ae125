"""docker-compose.yml and gpu.env as docker compose reads them (variables, profiles, commands): the deploy tests'
shared view of the shipped files, with no Docker engine."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
GPU_ENV = ROOT / "gpu.env"
_VAR = re.compile(r"\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?-)(?P<default>[^}]*))?\}")


# --- loading: what docker compose would see ---------------------------------------------------------------


def read_env_file(path: Path) -> dict[str, str]:
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value
    return env


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR-default}, applied to every string in a parsed document."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        name, op, default = match["name"], match["op"], match["default"] or ""
        if op == ":-":
            return env.get(name) or default
        if op == "-":
            return env.get(name, default)
        return env.get(name, "")

    return _VAR.sub(substitute, value).replace("$$", "$")


def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def active_services(raw: dict, env: dict[str, str], profiles: set[str]) -> dict[str, dict]:
    services = interpolate(raw["services"], env)
    return {name: service for name, service in services.items()
            if not service.get("profiles") or set(service["profiles"]) & profiles}


def argv(value) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(item) for item in value]


def flag(args: list[str], name: str) -> str | None:
    """The value of `--name VALUE` or `--name=VALUE` in an argument list."""
    for index, arg in enumerate(args):
        if arg == name and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def gpu_setup() -> tuple[dict[str, str], set[str]]:
    env = read_env_file(GPU_ENV)
    return env, set(env.get("COMPOSE_PROFILES", "").split(",")) | {"gpu"}
