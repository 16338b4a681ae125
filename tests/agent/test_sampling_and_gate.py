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
