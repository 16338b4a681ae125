"""Per-row sampling helpers and the policy-version gate."""

import asyncio

import torch

from shared.models.sampling import inverse_cdf, sample_next, top_p_filter
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


def test_seeded_draws_follow_the_distribution_and_never_pick_a_zero_probability_token():
    probs = torch.tensor([0.5, 0.0, 0.3, 0.2, 0.0])
    generator = torch.Generator().manual_seed(0)
    n = 20_000
    draws = inverse_cdf(probs.expand(n, -1), torch.rand(n, generator=generator))
    frequencies = torch.bincount(draws, minlength=5).float() / n
    assert frequencies[1] == 0 and frequencies[4] == 0
    assert torch.allclose(frequencies, probs, atol=0.015)


def test_a_draw_at_the_top_of_the_cdf_still_lands_on_a_possible_token():
    # Should float rounding put the scaled uniform at the CDF's last value, the draw must not fall off the end
    # onto the zero-probability tail (which top-p masks to exactly 0); a uniform of 1 forces that case.
    probs = torch.tensor([[0.25, 0.75, 0.0, 0.0], [0.1, 0.2, 0.3, 0.4]])
    assert inverse_cdf(probs, torch.tensor([1.0, 1.0])).tolist() == [1, 3]
    assert inverse_cdf(probs, torch.tensor([0.0, 0.0])).tolist() == [0, 0]


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
