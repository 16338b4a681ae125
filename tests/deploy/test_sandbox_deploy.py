"""What the sandbox needs from the deployment, checked without a Docker engine (scripts/sandbox_container_check.sh
runs it in a real container): the model services get the seccomp profile bubblewrap needs and nothing more, the
other services keep Docker's defaults, the image and setup.sh install bubblewrap, and the profile is the one
scripts/make_seccomp_profile.py writes."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
PROFILE = ROOT / "deploy" / "seccomp-sandbox.json"
MODEL_SERVICES = ("student", "teacher")
OTHER_SERVICES = ("coordinator", "trainer")


def generator():
    spec = importlib.util.spec_from_file_location("make_seccomp_profile", ROOT / "scripts" / "make_seccomp_profile.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def services() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]


def test_model_services_get_the_sandbox_profile_and_no_capabilities():
    for name in MODEL_SERVICES:
        service = services()[name]
        assert service["security_opt"] == ["no-new-privileges:true", "seccomp=./deploy/seccomp-sandbox.json"], name
        assert service["cap_drop"] == ["ALL"] and "cap_add" not in service and not service.get("privileged"), name


def test_other_services_keep_the_default_profile():
    for name in OTHER_SERVICES:
        service = services()[name]
        assert service["cap_drop"] == ["ALL"] and "cap_add" not in service, name
        assert not any(opt.startswith(("seccomp", "apparmor")) for opt in service["security_opt"]), name


def test_profile_allows_what_bwrap_needs_and_refuses_the_rest():
    profile = json.loads(PROFILE.read_text())
    make = generator()
    allowed = set(profile["syscalls"][0]["names"])
    denied = set(profile["syscalls"][-1]["names"])
    assert set(make.BWRAP_NEEDS) <= allowed
    assert not allowed & make.DENY and {"keyctl", "bpf", "ptrace", "setns", "open_by_handle_at"} <= denied
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    # The file is exactly what the generator makes from the same syscall table.
    assert make.profile(sorted(allowed | denied | {"personality"})) == profile


def test_image_and_setup_install_bubblewrap():
    dockerfile = (ROOT / "Dockerfile").read_text()
    runtime = dockerfile[dockerfile.index("AS runtime"):]
    assert "apt-get install -y --no-install-recommends bubblewrap" in runtime
    assert "install -y -qq --no-install-recommends bubblewrap" in (ROOT / "scripts" / "setup.sh").read_text()
