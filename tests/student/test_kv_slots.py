"""The slot KV cache (`kv_cache: slots`, the default) decodes exactly what the legacy DynamicCache layout does:
the same greedy tokens and the same log-probabilities (float tolerance), whatever the batch does around a row
(different prompt lengths, rows finishing at different steps, rows joining mid-batch, growth of slots and
columns, shrinking, the prefix cache)."""

import asyncio

import pytest
import torch

from shared.agent.tokens import chat_token_ids, tool_turn_ids
from shared.models.kv_slots import MIN_CAPACITY, MIN_SLOTS
from shared.models.transformers_engine import TransformersEngine
from shared.schemas.sampling import SamplingParams

ATOL = 1e-4


def _start(engines):
    async def go():
        for engine in engines:
            await engine.start()

    asyncio.run(go())


def _close(engines):
    async def go():
        for engine in engines:
            await engine.close()

    asyncio.run(go())


@pytest.fixture(scope="module")
def engines(student_model_dir):
    pair = {kind: TransformersEngine(str(student_model_dir), device="cpu", kv_cache=kind) for kind in ("slots", "legacy")}
    _start(pair.values())
    yield pair
    _close(pair.values())


@pytest.fixture(scope="module")
def cached_engines(student_model_dir):
    pair = {kind: TransformersEngine(str(student_model_dir), device="cpu", kv_cache=kind, prefix_cache_mb=64)
            for kind in ("slots", "legacy")}
    _start(pair.values())
    yield pair
    _close(pair.values())


def _ids(engine, text):
    return chat_token_ids(engine.tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)


def _assert_same(slots_outs, legacy_outs):
    assert len(slots_outs) == len(legacy_outs)
    for slot, legacy in zip(slots_outs, legacy_outs):
        assert slot.token_ids == legacy.token_ids
        assert slot.finish_reason == legacy.finish_reason
        assert torch.allclose(torch.tensor(slot.logprobs), torch.tensor(legacy.logprobs), atol=ATOL)


def _together(engine, prompts, samplings):
    async def go():
        return await asyncio.gather(*(engine.generate(p, s) for p, s in zip(prompts, samplings)))

    return asyncio.run(go())


def test_rejects_an_unknown_layout(student_model_dir):
    with pytest.raises(ValueError, match="kv_cache"):
        TransformersEngine(str(student_model_dir), device="cpu", kv_cache="paged")


@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "seeded"])
def test_different_prompt_lengths_and_finishing_steps(engines, temperature):
    # 20 rows in 32 slots: rows finish from step 3 to step 117, so the batch moves rows into freed slots many
    # times, shrinks its slots, and the longest rows outgrow the initial columns.
    prompts = [_ids(engines["slots"], "Compute " + " + ".join(str(j) for j in range(i % 7 + 1)) + ".")
               for i in range(20)]
    samplings = [SamplingParams(temperature=temperature, max_tokens=3 + 6 * i, seed=100 + i, stop=[]) for i in range(20)]
    assert max(len(p) for p in prompts) + 3 + 6 * 19 > 2 * MIN_CAPACITY
    outs = {kind: _together(engine, prompts, samplings) for kind, engine in engines.items()}
    _assert_same(outs["slots"], outs["legacy"])
    assert len({len(out.token_ids) for out in outs["slots"]}) > 5  # the rows did finish at different steps


def test_rows_joining_mid_batch_and_slot_growth(engines):
    """One long row starts alone (the minimum slot count), then more rows than its slots join while it decodes."""
    def run(engine):
        async def go():
            batches = engine.stats()["batches"]
            first = asyncio.ensure_future(engine.generate(
                _ids(engine, "Write a long story."), SamplingParams(temperature=0.0, max_tokens=400)))
            while engine.stats()["batches"] == batches:  # the first row's batch has started
                await asyncio.sleep(0.002)
            later = [engine.generate(_ids(engine, f"Compute {i} * {i + 3}." * (1 + i % 3)),
                                     SamplingParams(temperature=0.0, max_tokens=10 + 7 * i)) for i in range(MIN_SLOTS + 4)]
            return await asyncio.gather(first, *later)

        before = engine.stats()["joined_requests"]
        outs = asyncio.run(go())
        return outs, engine.stats()["joined_requests"] - before

    slots, joined = run(engines["slots"])
    legacy, _ = run(engines["legacy"])
    if slots[0].finish_reason != "length":
        pytest.skip("the tiny model stopped the long row early: nothing was left to join")
    assert joined > 0  # rows did join the running batch
    _assert_same(slots, legacy)


def test_prefix_cache_with_slots(cached_engines, engines):
    """Multi-turn episodes with the prefix cache: slots and legacy (both cached) and legacy uncached agree."""
    async def episode(engine, i):
        tokens, outs = _ids(engine, f"Compute {i} + {i * 7}."), []
        for turn in range(4):
            out = await engine.generate(tokens, SamplingParams(temperature=0.0, max_tokens=8 + 3 * i, seed=turn))
            outs.append(out)
            eos = bool(out.token_ids) and out.token_ids[-1] == engine.tokenizer.eos_token_id
            tokens = tokens + out.token_ids + tool_turn_ids(engine.tokenizer, f"Observation: {turn * 17}",
                                                            model_emitted_eos=eos)
        return outs

    def run(engine):
        async def go():
            return await asyncio.gather(*(episode(engine, i) for i in range(6)))

        return [out for outs in asyncio.run(go()) for out in outs]

    slots, cached_legacy, plain = run(cached_engines["slots"]), run(cached_engines["legacy"]), run(engines["legacy"])
    _assert_same(slots, cached_legacy)
    _assert_same(slots, plain)
    assert sum(out.cached_tokens for out in slots) > 0  # later turns did reuse states kept from slots
    assert [out.cached_tokens for out in slots] == [out.cached_tokens for out in cached_legacy]


def test_models_the_slot_mask_cannot_serve_fall_back(student_model_dir):
    from shared.models.kv_slots import slots_unsupported
    from shared.models.loading import load_causal_lm

    model, _ = load_causal_lm(str(student_model_dir), device="cpu")
    assert slots_unsupported(model) is None
    model.config.layer_types = ["sliding_attention"] * model.config.num_hidden_layers
    assert "sliding" in slots_unsupported(model)
    model.config.layer_types = ["full_attention"] * model.config.num_hidden_layers
    model.config._attn_implementation = "flash_attention_2"
    assert "flash_attention_2" in slots_unsupported(model)
