"""The evaluation stage adds its held-out result to the evaluated checkpoint's model card (real Redis run store, a
checkpoint published with its card): once, updated in place when the stage finishes again, and only for a student
checkpoint under this SCORE_HOME."""

from __future__ import annotations

import asyncio
import shutil

from services.coordinator.context import RunContext
from services.coordinator.queue import StageQueue
from services.coordinator.stages.evaluation import EvalStage
from services.coordinator.store import RunStore
from shared.checkpoints import CheckpointStore
from shared.model_card import CARD, EVAL_START, TrainingFacts, read_card, training_card
from shared.schemas.checkpoints import Checkpoint
from shared.schemas.run_config import RunConfig
from shared.schemas.runs import RunPointers, ServedCheckpoint

RUN = "run-cards"


def chunk(key: str, solved: int, n: int = 4) -> tuple[str, dict]:
    correct = {f"{key}-t{i}": i < solved for i in range(n)}
    return key, {"n": n, "solved": solved, "answered": n, "turns": 2 * n, "tokens": 10 * n, "policy_version": 2,
                 "correct": correct, "teacher_spend": {}}


async def evaluate(ctx: RunContext, label: str, chunks: list[tuple[str, dict]], checkpoint: str | None) -> dict:
    """Record `chunks` as the eval stage's results and finish it, as the pipeline does after its last item."""
    store = ctx.store
    if checkpoint is not None:
        served = ServedCheckpoint(checkpoint=Checkpoint(name=f"{RUN}-{label}", version=1, path=checkpoint),
                                  policy_version=2, label=label)
        await store.set_pointers(RUN, RunPointers(student_checkpoint=served))
    stage = EvalStage(label)
    await store.plan(RUN, stage.name, [key for key, _ in chunks])
    for key, result in chunks:
        await store.record(RUN, stage.name, key, result)
    await stage.finish(ctx)
    return (await store.evals(RUN))[label]


def test_the_evaluated_checkpoint_gets_its_result_in_its_card(redis_url, tmp_path, student_model_dir):
    import redis.asyncio as aioredis

    checkpoints = tmp_path / "home" / "checkpoints"
    facts = TrainingFacts(method="sft", job=f"{RUN}-sft", parent="builtin:student")
    ref = CheckpointStore(checkpoints).publish(
        f"{RUN}-sft", lambda d: shutil.copytree(student_model_dir, d, dirs_exist_ok=True),
        card=lambda published: training_card(published, facts))
    elsewhere = tmp_path / "elsewhere"  # a checkpoint another SCORE_HOME published: its card is not ours to edit
    shutil.copytree(ref.path, elsewhere)

    async def scenario():
        client = aioredis.Redis.from_url(redis_url)
        store = RunStore(client, tmp_path / "runs")
        await store.create(RUN, RunConfig())
        ctx = RunContext(run_id=RUN, config=RunConfig(), store=store, queue=StageQueue(client, "t"), services=None,
                         run_dir=tmp_path / "runs" / RUN, checkpoints_dir=checkpoints)
        first = await evaluate(ctx, "sft", [chunk("sft-00000", 1)], ref.path)
        card_once = (checkpoints / f"{RUN}-sft" / "v1" / CARD).read_text()
        # The stage finishes again (a worker died after finishing it, before marking it done): one more chunk.
        again = await evaluate(ctx, "sft", [chunk("sft-00001", 3)], ref.path)
        teacher = await evaluate(ctx, "teacher", [chunk("teacher-00000", 4)], None)
        baseline = await evaluate(ctx, "baseline", [chunk("baseline-00000", 2)], str(elsewhere))
        await client.aclose()
        return first, card_once, again, teacher, baseline

    first, card_once, again, teacher, baseline = asyncio.run(scenario())
    assert first["checkpoint"] == again["checkpoint"] == ref.path and teacher["checkpoint"] is None
    assert f"| {RUN} | sft | held-out | 25.0% |" in card_once and "1/4" in card_once
    text = (checkpoints / f"{RUN}-sft" / "v1" / CARD).read_text()
    assert text.count(EVAL_START) == text.count("## Held-out evaluation") == 1
    assert f"| {RUN} | sft | held-out | 50.0% | [21.5%, 78.5%] | 4/8 |" in text and "1/4" not in text
    front, _ = read_card(ref.path)
    [evaluation] = front["score"]["evaluations"]  # the teacher has no checkpoint, the baseline's is elsewhere
    assert (evaluation["run"], evaluation["label"], evaluation["solved"], evaluation["n"]) == (RUN, "sft", 4, 8)
    assert front["score"]["lineage"] == ["builtin:student"]
    assert baseline["checkpoint"] == str(elsewhere) and EVAL_START not in (elsewhere / CARD).read_text()
