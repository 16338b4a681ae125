"""docker-compose.yml wiring, checked without a Docker engine: every URL reaches a service and a port it listens
on, every service has a healthcheck, SCORE_HOME is one volume at one path, no secret has a default, start order
goes by health, and the gpu profile reserves GPUs. Each check is also fed a broken copy and must catch it."""

from __future__ import annotations

import copy
import re
import shutil
import subprocess

import pytest

from shared.settings import DEFAULT_PORTS
from tests.deploy.compose_files import (
    GPU_ENV, ROOT, active_services, argv, flag, gpu_setup, interpolate, raw_compose, read_env_file,
)

SCORE_SERVICES = ("coordinator", "student", "teacher", "trainer")
SCORE_HOME = "/data"
HOME_VOLUME = "score-home"
SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "KEY")
_URL = re.compile(r"\b(?:https?|redis)://(?P<host>[A-Za-z0-9_.-]+):(?P<port>\d+)")
_EMPTY_SECRET = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(:?-)?\}$")


def listening_ports(service: dict) -> set[int]:
    """Ports the container listens on: its `--port`, a `score serve` default, or Redis's."""
    args = argv(service.get("entrypoint")) + argv(service.get("command"))
    port = flag(args, "--port")
    if port is not None:
        return {int(port)}
    if "serve" in args and args.index("serve") + 1 < len(args) and args[args.index("serve") + 1] in DEFAULT_PORTS:
        return {DEFAULT_PORTS[args[args.index("serve") + 1]]}
    if str(service.get("image", "")).startswith("redis:"):
        return {6379}
    return set()


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def volume_mounts(service: dict) -> dict[str, str]:
    """Named volume -> path inside the container."""
    mounts = {}
    for volume in service.get("volumes") or []:
        source, _, target = volume.partition(":")
        mounts[source] = target.split(":")[0]
    return mounts


def is_one_shot(service: dict) -> bool:
    return str(service.get("restart", "no")) == "no"


# --- checks -----------------------------------------------------------------------------------------------


def url_problems(services: dict[str, dict]) -> list[str]:
    problems = []
    for name, service in services.items():
        places = list(environment(service).values()) + argv(service.get("command"))
        places += [" ".join(argv((service.get("healthcheck") or {}).get("test")))]
        for text in places:
            for match in _URL.finditer(text):
                host, port = match["host"], int(match["port"])
                target = name if host in ("127.0.0.1", "localhost") else host
                if target not in services:
                    problems.append(f"{name}: {match[0]} names no active service")
                elif port not in listening_ports(services[target]):
                    problems.append(f"{name}: {match[0]} but {target} listens on {sorted(listening_ports(services[target]))}")
    return problems


def healthcheck_problems(services: dict[str, dict]) -> list[str]:
    problems = []
    for name, service in services.items():
        check = service.get("healthcheck") or {}
        if is_one_shot(service):
            continue  # a job that runs to completion is waited for by exit status instead
        if not check.get("test") or check.get("disable") or argv(check["test"])[:1] == ["NONE"]:
            problems.append(f"{name}: no healthcheck")
    return problems


def depends_on_problems(services: dict[str, dict]) -> list[str]:
    problems = []
    for name, service in services.items():
        depends = service.get("depends_on") or {}
        if isinstance(depends, list):
            problems.append(f"{name}: depends_on without conditions starts before {depends} are healthy")
            continue
        for target, spec in depends.items():
            condition = (spec or {}).get("condition")
            if target not in services:
                problems.append(f"{name}: depends_on {target}, which is not an active service")
            elif is_one_shot(services[target]):
                if condition != "service_completed_successfully":
                    problems.append(f"{name}: waits for job {target} with {condition}")
            elif condition != "service_healthy":
                problems.append(f"{name}: depends_on {target} with {condition}, not service_healthy")
    return problems


def home_volume_problems(services: dict[str, dict]) -> list[str]:
    problems = []
    for name, service in services.items():
        needs_home = name in SCORE_SERVICES or "--enable-lora" in argv(service.get("command"))
        if not needs_home:
            continue
        if volume_mounts(service).get(HOME_VOLUME) != SCORE_HOME:
            problems.append(f"{name}: {HOME_VOLUME} is not mounted at {SCORE_HOME}")
        home = environment(service).get("SCORE_HOME")
        if name in SCORE_SERVICES and home != SCORE_HOME:
            problems.append(f"{name}: SCORE_HOME={home!r}, not the volume's path {SCORE_HOME}")
    return problems


def secret_problems(raw_services: dict[str, dict]) -> list[str]:
    """On the file as written: a secret may only be read from the environment, never defaulted."""
    problems = []
    for name, service in raw_services.items():
        for key, value in environment(service).items():
            if any(word in key.upper() for word in SECRET_WORDS) and value and not _EMPTY_SECRET.match(value):
                problems.append(f"{name}: {key} has a literal or default value")
        if flag(argv(service.get("command")), "--api-key") is not None:
            problems.append(f"{name}: --api-key on the command line")
    return problems


def gpu_problems(services: dict[str, dict]) -> list[str]:
    problems = []
    for name, service in services.items():
        if "vllm" not in str(service.get("image", "")):
            continue
        devices = (((service.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices")
        if not any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices or []):
            problems.append(f"{name}: no GPU reservation")
    return problems


def engine_problems(services: dict[str, dict]) -> list[str]:
    """--base-url only with --engine openai, at a server that serves the same checkpoint as the local --model."""
    problems = []
    for name, service in services.items():
        args = argv(service.get("command"))
        engine, base_url = flag(args, "--engine"), flag(args, "--base-url")
        if base_url and engine != "openai":
            problems.append(f"{name}: --base-url with --engine {engine}")
        if engine != "openai":
            continue
        match = _URL.search(base_url or "")
        server = services.get(match["host"]) if match else None
        if server is None:
            problems.append(f"{name}: --engine openai without a reachable --base-url")
        elif flag(argv(server.get("command")), "--model") != flag(args, "--model"):
            problems.append(f"{name}: --model differs from the checkpoint {match['host']} serves")
    return problems


def compose_problems(raw: dict, env: dict[str, str], profiles: set[str]) -> list[str]:
    services = active_services(raw, env, profiles)
    raw_services = {name: service for name, service in raw["services"].items() if name in services}
    return (url_problems(services) + healthcheck_problems(services) + depends_on_problems(services)
            + home_volume_problems(services) + secret_problems(raw_services) + gpu_problems(services)
            + engine_problems(services))


CPU = ({}, set())


# --- the shipped files ------------------------------------------------------------------------------------


def test_cpu_compose_is_consistent():
    assert compose_problems(raw_compose(), *CPU) == []


def test_gpu_compose_is_consistent():
    assert compose_problems(raw_compose(), *gpu_setup()) == []


def test_cpu_defaults_run_the_built_in_models_with_the_scripted_teacher():
    services = active_services(raw_compose(), *CPU)
    assert set(services) == {"redis", *SCORE_SERVICES}
    for name in SCORE_SERVICES:
        args = argv(services[name]["command"])
        assert args[:2] == ["serve", name] and flag(args, "--host") == "0.0.0.0"
        assert services[name]["build"]["context"] == "." and flag(args, "--model") is None
    assert flag(argv(services["teacher"]["command"]), "--engine") == "expert"
    assert flag(argv(services["student"]["command"]), "--engine") == "transformers"
    assert "--appendonly" in argv(services["redis"]["command"])
    assert volume_mounts(services["redis"]) == {"redis-data": "/data"}
    assert any(str(port).endswith(":8000") for port in services["coordinator"]["ports"])
    for name in SCORE_SERVICES:
        assert "privileged" not in services[name] and services[name].get("user") in (None, "10001")


def test_teacher_engine_is_selectable_from_the_environment():
    services = active_services(raw_compose(), {"SCORE_TEACHER_ENGINE": "transformers"}, set())
    assert flag(argv(services["teacher"]["command"]), "--engine") == "transformers"
    assert compose_problems(raw_compose(), {"SCORE_TEACHER_ENGINE": "transformers"}, set()) == []


def test_gpu_profile_serves_student_and_teacher_on_vllm_with_lora():
    env, profiles = gpu_setup()
    services = active_services(raw_compose(), env, profiles)
    assert {"vllm-student", "vllm-teacher"} <= set(services)
    student = argv(services["student"]["command"])
    assert flag(student, "--engine") == "openai"
    assert flag(student, "--base-url") == "http://vllm-student:8000/v1"
    assert environment(services["student"])["SCORE_STUDENT_WEIGHT_SYNC"] == "lora"
    vllm = services["vllm-student"]
    assert "--enable-lora" in argv(vllm["command"]) and int(flag(argv(vllm["command"]), "--max-lora-rank")) >= 16
    assert environment(vllm)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", vllm["image"])
    assert any(mount.endswith("/.cache/huggingface") for mount in volume_mounts(vllm).values())


def test_no_secret_in_the_env_file():
    for key, value in read_env_file(GPU_ENV).items():
        assert not any(word in key.upper() for word in SECRET_WORDS), key


# --- every check can fail ---------------------------------------------------------------------------------


def _set_env(service: str, key: str, value: str):
    return lambda raw: raw["services"][service]["environment"].__setitem__(key, value)


def _set(service: str, key: str, value):
    return lambda raw: raw["services"][service].__setitem__(key, value)


BROKEN = {
    "wrong port": (_set_env("coordinator", "SCORE_STUDENT_URL", "${SCORE_STUDENT_URL:-http://student:9001}"),
                   CPU, "listens on [8001]"),
    "unknown host": (_set_env("coordinator", "SCORE_TRAINER_URL", "http://trainer2:8003"), CPU, "names no active"),
    "redis port": (_set_env("coordinator", "SCORE_REDIS_URL", "redis://redis:6380/0"), CPU, "listens on [6379]"),
    "service moved": (_set("trainer", "command", "serve trainer --host 0.0.0.0 --port 8013"), CPU, "listens on [8013]"),
    "no healthcheck": (lambda raw: raw["services"]["teacher"].pop("healthcheck"), CPU, "teacher: no healthcheck"),
    "healthcheck port": (lambda raw: raw["services"]["student"]["healthcheck"].__setitem__(
        "test", ["CMD", "python", "-c", "urlopen('http://127.0.0.1:8002/health')"]), CPU, "student: http://127.0.0.1:8002"),
    "default secret": (_set_env("student", "SCORE_API_TOKEN", "${SCORE_API_TOKEN:-changeme123}"), CPU, "SCORE_API_TOKEN"),
    "literal secret": (_set_env("vllm-student", "HF_TOKEN", "hf_abcdef"), "gpu", "HF_TOKEN"),
    "started, not healthy": (lambda raw: raw["services"]["coordinator"]["depends_on"]["redis"].__setitem__(
        "condition", "service_started"), CPU, "not service_healthy"),
    "inactive profile": (lambda raw: raw["services"]["coordinator"]["depends_on"].__setitem__(
        "vllm-student", {"condition": "service_healthy"}), CPU, "not an active service"),
    "home elsewhere": (_set("trainer", "volumes", ["score-home:/srv"]), CPU, "trainer: score-home"),
    "vllm without home": (_set("vllm-student", "volumes", ["hf-cache:/root/.cache/huggingface"]), "gpu",
                          "vllm-student: score-home"),
    "no gpu": (lambda raw: raw["services"]["vllm-teacher"].__setitem__("deploy", {}), "gpu", "no GPU reservation"),
    "base-url on transformers": (_set("student", "command", "serve student --engine transformers --base-url "
                                      "http://vllm-student:8000/v1"), "gpu", "--base-url with --engine transformers"),
    "tokenizer mismatch": (_set("student", "command", "serve student --engine openai --base-url "
                                "http://vllm-student:8000/v1 --model /data/models/hf/other"), "gpu", "--model differs"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copies_are_caught(case):
    mutate, setup, expected = BROKEN[case]
    env, profiles = gpu_setup() if setup == "gpu" else setup
    raw = copy.deepcopy(raw_compose())
    assert compose_problems(raw, env, profiles) == []
    mutate(raw)
    problems = compose_problems(raw, env, profiles)
    assert any(expected in problem for problem in problems), problems


def test_interpolation_follows_compose():
    env = {"SET": "x", "EMPTY": ""}
    assert interpolate("${SET:-d} ${EMPTY:-d} ${EMPTY-d} ${UNSET-d} ${UNSET} $$HOME", env) == "x d  d  $HOME"


# --- docker-compose itself ---------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose is not installed")
@pytest.mark.parametrize("args", [[], ["--env-file", "gpu.env", "--profile", "gpu"]], ids=["cpu", "gpu"])
def test_docker_compose_validates(args):
    result = subprocess.run(["docker-compose", *args, "config", "-q"], cwd=ROOT, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


# --- outside names: variables whose defaults are the public ones ------------------------------------------------


def _dockerfile_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S*)$", (ROOT / "Dockerfile").read_text(), flags=re.M)
    assert match, f"the Dockerfile has no ARG {name}"
    return match[1]


def test_every_outside_name_is_a_variable_defaulting_to_the_upstream_one():
    raw = raw_compose()
    build = raw["x-score-image"]["build"]
    for arg in ("PYTHON_IMAGE", "TORCH_INDEX_URL", "TORCH_TRUSTED_HOST", "PIP_INDEX_URL", "PIP_TRUSTED_HOST"):
        # the same default as the Dockerfile's, so `docker build` and `docker compose build` build the same image
        assert build["args"][arg] == f"${{{arg}:-{_dockerfile_default(arg)}}}", arg
    assert build["network"] == "${SCORE_BUILD_NETWORK:-default}"
    assert raw["services"]["redis"]["image"] == "${REDIS_IMAGE:-redis:7.4.2}"
    services = active_services(raw, {"REDIS_IMAGE": "local/redis:1", "PYTHON_IMAGE": "local/python:3.11"}, set())
    assert services["redis"]["image"] == "local/redis:1"
    assert services["student"]["build"]["args"]["PYTHON_IMAGE"] == "local/python:3.11"
    upstream = active_services(raw, {}, set())
    assert upstream["redis"]["image"] == "redis:7.4.2"
    assert upstream["student"]["build"]["args"]["PIP_INDEX_URL"] == "https://pypi.org/simple"
