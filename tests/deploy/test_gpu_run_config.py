"""configs/gpu.yaml, the run for the compose gpu profile: a valid run config whose training stages all publish
LoRA adapters (what vLLM loads at run time) on the base model vllm-student serves, within its adapter rank.
Like the compose checks, each check is also fed a broken copy and must catch it."""

from __future__ import annotations

import copy

import pytest
import yaml

from shared.schemas.run_config import RunConfig
from tests.deploy.compose_files import ROOT, active_services, argv, flag, gpu_setup, raw_compose

GPU_RUN = ROOT / "configs" / "gpu.yaml"
SFT_STAGES = ("bc_init", "sft", "baseline")


def raw_gpu_run() -> dict:
    return yaml.safe_load(GPU_RUN.read_text())


def served_student() -> tuple[str | None, str | None, int]:
    """(the student service's --model, vllm-student's --model, vllm-student's --max-lora-rank) under gpu.env."""
    services = active_services(raw_compose(), *gpu_setup())
    vllm = argv(services["vllm-student"]["command"])
    return flag(argv(services["student"]["command"]), "--model"), flag(vllm, "--model"), int(
        flag(vllm, "--max-lora-rank"))


def gpu_run_problems(raw: dict) -> list[str]:
    config = RunConfig.model_validate(raw)
    student_model, vllm_model, max_rank = served_student()
    problems = []
    for stage in SFT_STAGES:
        hp = getattr(config, stage).hyperparameters
        if not hp.lora or hp.merge_lora:
            problems.append(f"{stage}: publishes full weights; vLLM needs `lora: true, merge_lora: false`")
    if not config.rl.hyperparameters.lora:
        problems.append("rl: publishes full weights; vLLM needs `lora: true`")
    if not (config.bc_init.base == student_model == vllm_model):
        problems.append(f"bc_init.base {config.bc_init.base!r} is not the served student ({student_model!r}, "
                        f"vllm-student {vllm_model!r})")
    for stage in (*SFT_STAGES, "rl"):
        if getattr(config, stage).hyperparameters.lora_r > max_rank:
            problems.append(f"{stage}: lora_r exceeds vllm-student's --max-lora-rank {max_rank}")
    return problems


def test_the_gpu_run_config_validates_and_trains_adapters_on_the_served_student():
    raw = raw_gpu_run()
    assert gpu_run_problems(raw) == []
    config = RunConfig.model_validate(raw)
    assert config.bc_init.base.startswith("/data/models/hf/") and config.rl.steps > 0


def _set(path: str, value):
    *parents, key = path.split(".")

    def mutate(raw: dict) -> None:
        node = raw
        for part in parents:
            node = node.setdefault(part, {})
        node[key] = value

    return mutate


BROKEN = {
    "merged sft": (_set("sft.hyperparameters.merge_lora", True), "sft: publishes full weights"),
    "full baseline": (_set("baseline.hyperparameters", {"lora": False}), "baseline: publishes full weights"),
    "full rl": (_set("rl.hyperparameters.lora", False), "rl: publishes full weights"),
    "other base": (_set("bc_init.base", "/data/models/hf/Qwen/Qwen2.5-0.5B-Instruct"), "is not the served student"),
    "rank too high": (_set("rl.hyperparameters.lora_r", 128), "rl: lora_r exceeds"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_copies_are_caught(case):
    mutate, expected = BROKEN[case]
    raw = copy.deepcopy(raw_gpu_run())
    mutate(raw)
    problems = gpu_run_problems(raw)
    assert any(expected in problem for problem in problems), problems
