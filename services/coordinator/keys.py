"""Every Redis key the coordinator uses, in one place (the coordinator is the only owner of these keys).

    score:runs                          zset   run id -> created_at
    score:run:<id>                      hash   config, state, stage, error, timestamps, and the run's pointers
                                               (RunPointers: checkpoints served, ended on, started from; policy_version)
    score:run:<id>:stages               hash   <stage> -> StageProgress JSON; <stage>:settled -> count
    score:run:<id>:counters             hash   running totals (self_solved, repaired, teacher_tokens, ...)
    score:run:<id>:eval                 hash   policy label -> held-out results JSON
    score:run:<id>:results:<stage>      hash   item key -> result JSON (written once: the idempotency record)
    score:run:<id>:planned:<stage>      set    item keys the stage expects (anything else is dead-lettered)
    score:run:<id>:attempts             hash   <stage>/<item key> -> deliveries started
    score:run:<id>:events               stream progress events (SSE)
    score:run:<id>:claim:<item key>     string the worker running a control action (expires unless refreshed)
    score:run:<id>:ahead:<stage>        string the batch a streamed RL/OPD step prepared for the next (expires)
    score:q:<stage>                     stream work items of a stage, consumer group `workers`
    score:q:control                     stream stage transitions (enter / finish), consumer group `workers`
    score:dlq:<stage>                   stream items that exhausted their attempts, with the error
"""

from __future__ import annotations

PREFIX = "score"
GROUP = "workers"
CONTROL = "control"
# Stages whose work is fanned out as items (the others only have control actions).
WORK_STAGES = ("bc_init", "mps", "rl", "eval", "baseline")


def runs() -> str:
    return f"{PREFIX}:runs"


def run(run_id: str) -> str:
    return f"{PREFIX}:run:{run_id}"


def stages(run_id: str) -> str:
    return f"{run(run_id)}:stages"


def counters(run_id: str) -> str:
    return f"{run(run_id)}:counters"


def evals(run_id: str) -> str:
    return f"{run(run_id)}:eval"


def results(run_id: str, stage: str) -> str:
    return f"{run(run_id)}:results:{stage}"


def planned(run_id: str, stage: str) -> str:
    return f"{run(run_id)}:planned:{stage}"


def attempts(run_id: str) -> str:
    return f"{run(run_id)}:attempts"


def events(run_id: str) -> str:
    return f"{run(run_id)}:events"


def claim(run_id: str, item_key: str) -> str:
    return f"{run(run_id)}:claim:{item_key}"


def ahead(run_id: str, stage: str) -> str:
    return f"{run(run_id)}:ahead:{stage}"


def queue(stream: str) -> str:
    return f"{PREFIX}:q:{stream}"


def dead_letters(stage: str) -> str:
    return f"{PREFIX}:dlq:{stage}"

