"""What each arm of a run cost: teacher tokens by purpose (and the stage that spent them), training rows and
optimizer steps. Pure functions of the run's records, its RL and OPD step results and its counters."""

from __future__ import annotations

from services.coordinator.records import add_spend
from shared.schemas.runs import RunInfo
from shared.schemas.trajectories import TEACHER_PURPOSES, TeacherSpend, TrajectoryRecord

# Which stage each purpose's tokens are spent in; evaluation of the teacher is not training spend.
PURPOSE_STAGE = {"cold_start_trajectories": "bc_init", "corrections": "mps", "verify_rollouts": "mps",
                 "judgements": "mps", "rl_judgements": "rl", "baseline_trajectories": "baseline",
                 "reserve_trajectories": "baseline_tokens", "eval_trajectories": "eval_teacher", "rl_scoring": "rl",
                 "opd_scoring": "opd", "score_opd_judgements": "score_opd", "score_opd_scoring": "score_opd"}
# Arms of a comparison: the evaluated policy's label, and the teacher purposes whose spend it needed.
ARMS = {
    "cold_start": ("bc_init", ("cold_start_trajectories",)),
    "score_sft": ("sft", ("cold_start_trajectories", "corrections", "verify_rollouts", "judgements")),
    "score_rl": ("rl", ("cold_start_trajectories", "corrections", "verify_rollouts", "judgements", "rl_judgements",
                        "rl_scoring")),
    "baseline_equal_tasks": ("baseline", ("cold_start_trajectories", "baseline_trajectories")),
    "baseline_equal_tokens": ("baseline_tokens", ("cold_start_trajectories",)),
    "control": ("control", ("cold_start_trajectories",)),
    "opd": ("opd", ("cold_start_trajectories", "opd_scoring")),
    "score_opd": ("score_opd", ("cold_start_trajectories", "corrections", "verify_rollouts", "judgements",
                                "score_opd_judgements", "score_opd_scoring")),
}
SCORE_PURPOSES = ("cold_start_trajectories", "corrections", "verify_rollouts", "judgements", "rl_judgements",
                  "rl_scoring")


def teacher_cost(records: list[TrajectoryRecord], steps: list[dict], evals: dict) -> dict:
    """Teacher calls, prompt and written tokens by purpose (with its stage), and the totals SCoRe and the plain
    baseline spent (cold start counts for both: both start from it). `steps`: RL and OPD step results."""
    spent = add_spend(*(r.teacher_spend for r in records), *((s.get("teacher_spend") or {}) for s in steps),
                      *((e.get("teacher_spend") or {}) for e in evals.values()))
    by_purpose = {purpose: {"stage": PURPOSE_STAGE[purpose], **spent[purpose].model_dump()}
                  for purpose in TEACHER_PURPOSES if purpose in spent}
    return {"by_purpose": by_purpose, "score": _sum(spent, SCORE_PURPOSES),
            "baseline": _sum(spent, ("cold_start_trajectories", "baseline_trajectories"))}


def arms(info: RunInfo, records: list[TrajectoryRecord], steps: list[dict]) -> dict:
    """Each evaluated arm's cost: teacher tokens (prompt + written; cold start included, every arm starts from
    it), training rows and optimizer steps after cold start (the cold-start arm: its own). `steps`: RL and OPD
    step results."""
    spent = add_spend(*(r.teacher_spend for r in records), *((s.get("teacher_spend") or {}) for s in steps))
    counters = info.counters
    steps_of = {"bc_init": ("bc_init",), "sft": ("sft",), "rl": ("sft",), "baseline": ("baseline",),
                "baseline_tokens": ("baseline_tokens",), "control": ("control",), "opd": ("opd",),
                "score_opd": ("sft",)}
    out = {}
    for arm, (label, purposes) in ARMS.items():
        if label not in info.eval:
            continue
        cost = TeacherSpend.model_validate(_sum(spent, purposes))
        if arm == "baseline_equal_tokens":  # only the reserve trajectories within the budget were used
            cost = cost.add(TeacherSpend(prompt_tokens=int(counters.get("baseline_tokens_prompt_tokens", 0)),
                                         written_tokens=int(counters.get("baseline_tokens_written_tokens", 0))))
        steps = sum(int(counters.get(f"{stage}_optimizer_steps", 0)) for stage in steps_of[label])
        if label in ("rl", "score_opd"):  # SFT's steps, then the RL steps taken from its checkpoint
            steps += int(counters.get(f"{label}_steps", 0))
        out[arm] = {"label": label, "teacher_tokens": cost.prompt_tokens + cost.written_tokens,
                    "teacher_prompt_tokens": cost.prompt_tokens, "teacher_written_tokens": cost.written_tokens,
                    "train_rows": int(counters.get(f"{steps_of[label][0]}_train_rows", 0)),
                    "optimizer_steps": steps}
    return out


def _sum(spent: dict, purposes) -> dict:
    out = TeacherSpend()
    for purpose in purposes:
        if purpose in spent:
            out = out.add(spent[purpose])
    return out.model_dump()
