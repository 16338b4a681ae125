"""GRPO really learns, end to end over HTTP: a real `score serve trainer` process updates the policy,
a real generation engine samples from each published version, and a programmatic reward goes up."""

import asyncio
import statistics

import httpx
import pytest
import torch

from shared.models.transformers_engine import TransformersEngine
from shared.schemas.sampling import SamplingParams
from tests.service_process import ServiceProcess

PROMPTS = ["Write a word.", "Say something.", "Name a city.", "Answer now."]
GROUP_SIZE = 8
STEPS = 20
MAX_TOKENS = 12


def target_tokens(tokenizer) -> set[int]:
    """The reward's target: tokens whose text contains an 'e' (about a quarter of the vocabulary)."""
    return {i for i in range(len(tokenizer)) if "e" in tokenizer.decode([i])}


async def sample_groups(engine, prompts: list[list[int]], targets: set[int], step: int) -> list[dict]:
    sampling = [SamplingParams(temperature=1.0, max_tokens=MAX_TOKENS, seed=step * 1000 + i) for i in range(len(prompts) * GROUP_SIZE)]
    outputs = await asyncio.gather(*[
        engine.generate(prompt, sampling[p * GROUP_SIZE + k]) for p, prompt in enumerate(prompts) for k in range(GROUP_SIZE)
    ])
    groups = []
    for p, prompt in enumerate(prompts):
        samples = []
        for out in outputs[p * GROUP_SIZE : (p + 1) * GROUP_SIZE]:
            reward = sum(token in targets for token in out.token_ids) / len(out.token_ids)
            samples.append({
                "token_ids": prompt + out.token_ids,
                "loss_mask": [0] * len(prompt) + [1] * len(out.token_ids),
                "logprobs": [0.0] * len(prompt) + out.logprobs,
                "policy_version": engine.policy_version,
                "reward": reward,
                "prompt_length": len(prompt),
            })
        groups.append({"samples": samples, "prompt_id": f"prompt-{p}"})
    return groups


@pytest.mark.slow
def test_mean_reward_rises_through_the_trainer_service(score_home, student_model_dir, tmp_path):
    # Two processes share the machine: one compute thread each, so their OpenMP pools do not spin against
    # each other (on 2 cores that oversubscription makes every step several times slower).
    trainer = ServiceProcess("trainer", "--device", "cpu", home=score_home, log_dir=tmp_path, env={"OMP_NUM_THREADS": "1"})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer.wait_ready()
        curve = asyncio.run(_train(trainer.url, student_model_dir))
    finally:
        torch.set_num_threads(threads)
        trainer.stop()
    first, last = statistics.mean(curve[:5]), statistics.mean(curve[-5:])
    assert last > first + 0.3, f"reward did not rise: {[round(r, 3) for r in curve]}\n{trainer.log_tail()}"


async def _train(url: str, model_dir) -> list[float]:
    engine = TransformersEngine(str(model_dir), device="cpu")
    await engine.start()
    try:
        tokenizer = engine.tokenizer
        targets = target_tokens(tokenizer)
        prompts = [
            tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True)["input_ids"]
            for text in PROMPTS
        ]
        async with httpx.AsyncClient(base_url=url, timeout=120) as client:
            created = await client.post("/v1/rl/sessions", json={
                "session_id": "learn-e", "hyperparameters": {"learning_rate": 2e-2, "max_staleness": 0},
            })
            assert created.status_code == 201, created.text
            curve = []
            first_batch = None
            for step in range(STEPS):
                groups = await sample_groups(engine, prompts, targets, step)
                first_batch = first_batch or groups
                response = await client.post("/v1/rl/sessions/learn-e/steps", json={"groups": groups})
                assert response.status_code == 200, response.text
                result = response.json()
                curve.append(result["metrics"]["reward/mean"])
                assert result["policy_version"] == step + 1
                # the student's POST /v1/weights does exactly this with the path and version
                await engine.load_weights(result["checkpoint"]["path"], result["policy_version"])
            stale = await client.post("/v1/rl/sessions/learn-e/steps", json={"groups": first_batch})
            assert stale.status_code == 409, stale.text
            assert stale.json()["error"]["param"] == "body.groups.0.samples.0.policy_version"
        return curve
    finally:
        await engine.close()
