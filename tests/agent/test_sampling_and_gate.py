"""Per-row sampling helpers and the policy-version gate."""

import asyncio

import torch

from shared.models.sampling import sample_next, top_p_filter
from shared.versioning import VersionGate


def test_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]]))
    filtered = top_p_filter(logits, torch.tensor([0.7, 1.0]))
    assert torch.isfinite(filtered[0]).tolist() == [True, True, False, False]
    assert torch.isfinite(filtered[1]).all()


def test_greedy_rows_and_seeded_rows_are_reproducible():
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(1))
    temperature = torch.tensor([0.0, 1.0, 1.0, 0.0])
    top_p = torch.ones(4)

    def gens():
        return [None, torch.Generator().manual_seed(7), torch.Generator().manual_seed(8), None]

    first = sample_next(logits, temperature, top_p, gens())
    second = sample_next(logits, temperature, top_p, gens())
    assert first.tolist() == second.tolist()
    assert first[0] == logits[0].argmax() and first[3] == logits[3].argmax()


def test_a_seeded_row_draws_the_same_token_whatever_the_batch_around_it():
    logits = torch.randn(6, 40, generator=torch.Generator().manual_seed(2))
    ones = torch.ones(6)
    alone = [sample_next(logits[i:i + 1], ones[:1], ones[:1], [torch.Generator().manual_seed(i)]).item()
             for i in range(6)]
    together = sample_next(logits, ones, ones, [torch.Generator().manual_seed(i) for i in range(6)])
    assert together.tolist() == alone


def test_a_seeded_row_draws_what_a_multinomial_call_with_its_generator_draws():
    # Same tokens as before the rows were batched, step after step, top-p masked rows included.
    logits = torch.randn(8, 300, generator=torch.Generator().manual_seed(3))
    temperature, top_p = torch.full((8,), 0.8), torch.tensor([1.0, 0.9, 0.5, 1.0, 0.3, 1.0, 0.95, 1.0])
    batched = [torch.Generator().manual_seed(100 + i) for i in range(8)]
    alone = [torch.Generator().manual_seed(100 + i) for i in range(8)]
    probs = torch.softmax(top_p_filter(logits / temperature.unsqueeze(-1), top_p), dim=-1)
    for _ in range(5):
        expected = [torch.multinomial(probs[i], 1, generator=alone[i]).item() for i in range(8)]
        assert sample_next(logits, temperature, top_p, batched).tolist() == expected


def test_gate_lets_a_swap_wait_for_requests_and_hold_new_ones():
    async def scenario():
        gate, order = VersionGate(), []

        async def request(name, hold):
            async with gate.request():
                order.append(f"{name}-start")
                await asyncio.sleep(hold)
                order.append(f"{name}-end")

        async def swap():
            async with gate.swap():
                order.append("swap")

        first = asyncio.create_task(request("a", 0.05))
        await asyncio.sleep(0.01)
        swapping = asyncio.create_task(swap())
        await asyncio.sleep(0.01)
        late = asyncio.create_task(request("b", 0))
        await asyncio.gather(first, swapping, late)
        return order

    assert asyncio.run(scenario()) == ["a-start", "a-end", "swap", "b-start", "b-end"]


def test_a_temperature_too_small_to_divide_by_samples_greedily():
    logits = torch.tensor([[1.0, 3.0, 2.0], [0.5, 0.1, 0.2]])
    chosen = sample_next(logits, torch.tensor([1.1754943508222875e-38, 0.0]), torch.ones(2), [None, None])
    assert chosen.tolist() == [1, 0]
