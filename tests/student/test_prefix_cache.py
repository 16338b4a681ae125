"""The engine's prefix cache: an episode's later turns prefill only their new tokens, and sample exactly as
without the cache (same tokens for the same seed, same log-probabilities within float tolerance)."""

import asyncio

import pytest
import torch

from shared.agent.tokens import chat_token_ids, tool_turn_ids
from shared.models.prefix_cache import BLOCK, PrefixCache
from shared.models.transformers_engine import TransformersEngine
from shared.schemas.sampling import SamplingParams


@pytest.fixture(scope="module")
def engines(student_model_dir):
    cached = TransformersEngine(str(student_model_dir), device="cpu", prefix_cache_mb=64)
    plain = TransformersEngine(str(student_model_dir), device="cpu", prefix_cache_mb=0)

    async def start():
        await cached.start()
        await plain.start()

    asyncio.run(start())
    yield cached, plain

    async def close():
        await cached.close()
        await plain.close()

    asyncio.run(close())


def _ids(engine, text):
    return chat_token_ids(engine.tokenizer, [{"role": "user", "content": text}], add_generation_prompt=True)


async def _episode(engine, prompt, sampling_of_turn, turns):
    """A multi-turn episode as the rollout runner plays it: generated tokens, then an observation turn."""
    tokens, outputs = list(prompt), []
    for turn in range(turns):
        out = await engine.generate(tokens, sampling_of_turn(turn))
        outputs.append(out)
        emitted_eos = bool(out.token_ids) and out.token_ids[-1] == engine.tokenizer.eos_token_id
        tokens += out.token_ids + tool_turn_ids(engine.tokenizer, f"Observation: {turn * 17}", model_emitted_eos=emitted_eos)
    return tokens, outputs


def _episodes(engine, samplings, turns=4):
    async def go():
        return await asyncio.gather(*(
            _episode(engine, _ids(engine, f"Compute {i} + {i * 7}."), sampling, turns)
            for i, sampling in enumerate(samplings)
        ))

    return asyncio.run(go())


def _assert_same(cached_outs, plain_outs):
    for with_cache, without in zip(cached_outs, plain_outs):
        assert with_cache.token_ids == without.token_ids
        assert torch.allclose(torch.tensor(with_cache.logprobs), torch.tensor(without.logprobs), atol=1e-4)


@pytest.mark.parametrize("temperature", [1.0, 0.0], ids=["seeded", "greedy"])
def test_concurrent_episodes_sample_the_same_tokens_with_and_without_the_cache(engines, temperature):
    cached, plain = engines
    samplings = [
        (lambda turn, i=i: SamplingParams(temperature=temperature, max_tokens=8 + 3 * i, seed=50 + 10 * i + turn))
        for i in range(6)
    ]
    before = cached.stats()
    with_cache = _episodes(cached, samplings)
    after = cached.stats()
    without = _episodes(plain, samplings)
    for (tokens_c, outs_c), (tokens_p, outs_p) in zip(with_cache, without):
        assert tokens_c == tokens_p
        _assert_same(outs_c, outs_p)
        assert all(out.cached_tokens > 0 for out in outs_c[1:])  # every later turn reused its episode's states
        assert all(out.cached_tokens == 0 for out in outs_p)
    prefilled = after["prefill_tokens"] - before["prefill_tokens"]
    length = sum(len(tokens) for tokens, _ in with_cache)
    assert prefilled <= length  # each token is prefilled at most once (generated ones are decoded instead)
    assert after["cached_tokens"] - before["cached_tokens"] > 0


def test_a_batch_mixing_hits_misses_and_partial_prefixes_matches_the_uncached_engine(engines):
    cached, plain = engines
    first = SamplingParams(temperature=1.0, max_tokens=10, seed=7)
    prompt = _ids(cached, "Compute 40 + 2, then add 3.")
    turn1 = asyncio.run(cached.generate(prompt, first))
    observation = tool_turn_ids(cached.tokenizer, "Observation: 42", model_emitted_eos=False)
    continued = prompt + turn1.token_ids + observation                # extends the cached entry: a hit
    diverged = prompt + [turn1.token_ids[0] + 1] + observation         # shares the prompt only: a partial hit
    fresh = cached.tokenizer("Compute 8 * 9: no chat template, so nothing is shared.")["input_ids"]  # a miss
    prompts = [continued, diverged, fresh]
    samplings = [SamplingParams(temperature=1.0, max_tokens=12, seed=100 + i) for i in range(3)]

    def together(engine):
        async def go():
            return await asyncio.gather(*(engine.generate(p, s) for p, s in zip(prompts, samplings)))
        return asyncio.run(go())

    batches_before = cached.stats()["batches"]
    with_cache, without = together(cached), together(plain)
    assert cached.stats()["batches"] - batches_before == 1  # all three were prefilled into one batch
    assert with_cache[0].cached_tokens == len(prompt) + len(turn1.token_ids) - 1
    assert len(prompt) - BLOCK < with_cache[1].cached_tokens <= len(prompt)
    assert with_cache[2].cached_tokens == 0
    _assert_same(with_cache, without)


def test_loading_weights_empties_the_cache(engines, student_model_dir):
    cached, _ = engines
    sampling = SamplingParams(temperature=0.0, max_tokens=6)
    prompt = _ids(cached, "Compute 5 + 6.")
    out = asyncio.run(cached.generate(prompt, sampling))
    follow = prompt + out.token_ids + [out.token_ids[-1]]
    asyncio.run(cached.load_weights(str(student_model_dir), cached.policy_version + 1))
    assert asyncio.run(cached.generate(follow, sampling)).cached_tokens == 0


def _states(tokens, width=4):
    keys = [torch.full((1, len(tokens), width), float(tokens[0]))]
    return keys, [k.clone() for k in keys]


def test_lookup_takes_the_longest_shared_prefix_and_never_the_whole_prompt():
    cache = PrefixCache(max_bytes=1 << 20)
    short, long = list(range(40)), list(range(70))
    cache.insert(short, *_states(short))
    cache.insert(long, *_states(long))
    entry, length = cache.lookup(list(range(60)) + [999])
    assert entry.tokens == long and length == 60
    entry, length = cache.lookup(list(range(70)))
    assert entry.tokens == long and length == 69  # the last prompt token must run through the model
    assert cache.lookup([5] * 40) == (None, 0)


def test_entries_are_evicted_least_recently_used_under_the_byte_bound():
    one = _states(list(range(BLOCK * 2)))
    size = sum(t.numel() * t.element_size() for t in one[0] + one[1])
    cache = PrefixCache(max_bytes=2 * size)
    a, b, c = ([k] * (BLOCK * 2) for k in (1, 2, 3))
    cache.insert(a, *_states(a))
    cache.insert(b, *_states(b))
    assert cache.lookup(a + [0])[1] == len(a)  # a is now the most recently used
    cache.insert(c, *_states(c))
    assert cache.bytes <= 2 * size and cache.evictions == 1
    assert cache.lookup(b + [0]) == (None, 0)
    assert cache.lookup(a + [0])[1] == len(a) and cache.lookup(c + [0])[1] == len(c)
