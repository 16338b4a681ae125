"""MicroBatcher: one-item calls of concurrent items gathered into batched calls, answers routed back in order."""

from __future__ import annotations

import asyncio

import pytest

from services.coordinator.batching import MicroBatcher


class Recorder:
    def __init__(self, delay_s: float = 0.0, fail: Exception | None = None, drop_last: bool = False) -> None:
        self.calls: list[list[int]] = []
        self.delay_s, self.fail, self.drop_last = delay_s, fail, drop_last

    async def __call__(self, items: list[int]) -> list[str]:
        self.calls.append(list(items))
        await asyncio.sleep(self.delay_s)
        if self.fail is not None:
            raise self.fail
        answers = [f"answer-{x}" for x in items]
        return answers[:-1] if self.drop_last else answers


def run(coro):
    return asyncio.run(coro)


def test_concurrent_calls_share_batches_of_at_most_max_size_and_get_their_own_answers():
    async def main():
        call = Recorder()
        batcher = MicroBatcher(call, max_size=4, max_wait_s=0.05)
        answers = await asyncio.gather(*(batcher.submit(i) for i in range(10)))
        return call, batcher, answers

    call, batcher, answers = run(main())
    assert answers == [f"answer-{i}" for i in range(10)]
    # The first eight fill two batches, sent at once; the last two go out when the timer fires.
    assert call.calls[:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert call.calls[2] == [8, 9]
    assert (batcher.batches, batcher.items) == (3, 10)


def test_a_lone_call_is_sent_after_max_wait_not_held_for_a_full_batch():
    async def main():
        call = Recorder()
        batcher = MicroBatcher(call, max_size=32, max_wait_s=0.05)
        loop = asyncio.get_running_loop()
        started = loop.time()
        answer = await batcher.submit(7)
        return call, answer, loop.time() - started

    call, answer, waited = run(main())
    assert answer == "answer-7" and call.calls == [[7]]
    assert 0.04 <= waited < 2.0


def test_max_size_one_sends_every_call_alone():
    async def main():
        call = Recorder(delay_s=0.01)
        batcher = MicroBatcher(call, max_size=1, max_wait_s=10.0)
        await asyncio.gather(*(batcher.submit(i) for i in range(3)))
        return call

    assert sorted(run(main()).calls) == [[0], [1], [2]]


def test_a_failed_batch_fails_every_caller_in_it_and_the_next_batch_still_works():
    async def main():
        call = Recorder(fail=RuntimeError("teacher POST /v1/corrections -> 503"))
        batcher = MicroBatcher(call, max_size=3, max_wait_s=0.01)
        failed = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
        call.fail = None
        after = await batcher.submit(9)
        return failed, after

    failed, after = run(main())
    assert all(isinstance(f, RuntimeError) and "503" in str(f) for f in failed)
    assert after == "answer-9"


def test_an_answer_count_that_does_not_match_fails_the_batch_instead_of_misrouting_answers():
    async def main():
        batcher = MicroBatcher(Recorder(drop_last=True), max_size=2, max_wait_s=1.0)
        return await asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)

    results = run(main())
    assert all(isinstance(r, RuntimeError) and "2 inputs" in str(r) for r in results)


def test_a_cancelled_caller_does_not_disturb_the_others_in_its_batch():
    async def main():
        call = Recorder(delay_s=0.05)
        batcher = MicroBatcher(call, max_size=8, max_wait_s=0.01)
        first = asyncio.create_task(batcher.submit(1))
        second = asyncio.create_task(batcher.submit(2))
        await asyncio.sleep(0.02)  # the batch is out
        first.cancel()
        return await second, call.calls

    answer, calls = run(main())
    assert answer == "answer-2" and calls == [[1, 2]]


def test_a_batch_size_below_one_is_refused():
    with pytest.raises(ValueError, match="max_size"):
        MicroBatcher(Recorder(), max_size=0, max_wait_s=0.0)
