"""Experiments (`/v1/experiments`): SCoRe against plain distillation and a control, several seeds, one held-out set.

An experiment runs one coordinator run per seed, one after another (the runs share the student service). Every
run trains all arms from its own cold-start checkpoint and evaluates them on the same held-out tasks (the
`eval_seed` fixes them across seeds); the results are computed from the per-task outcomes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from shared.schemas.run_config import RunConfig, safe_label

ExperimentState = Literal["running", "succeeded", "failed"]


class ExperimentConfig(BaseModel):
    """What to compare: a run config (its SCoRe stages and baseline settings) repeated over seeds."""

    # A tiny comparison: two seeds, a handful of tasks, one RL step.
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "name": "tiny", "seeds": [0, 1], "eval_seed": 0,
        "run": {"tasks": {"n_bc_init": 2, "n_train": 2, "n_rl": 1, "n_eval": 2, "n_reserve": 4},
                "sft": {"hyperparameters": {"max_steps": 2}}, "rl": {"steps": 1, "prompts_per_step": 1,
                                                                     "group_size": 2, "max_turns": 2}},
    }]})

    name: str | None = Field(default=None, description="A label for listings.", examples=["score-vs-distill"])
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field(
        default_factory=lambda: [0, 1, 2], min_length=1, max_length=16,
        description="Training seeds: each seeds its run's training task pools and sampling.", examples=[[0, 1, 2]],
    )
    eval_seed: int = Field(
        default=0, ge=0, le=2**32 - 1, description="Seeds the held-out tasks, the same for every seed's run.", examples=[0],
    )
    run: RunConfig = Field(
        default_factory=RunConfig,
        description="The run config every seed uses. The experiment sets `tasks.seed` and `tasks.eval_seed`, starts "
        "the baseline from the cold-start checkpoint, and turns on the equal-token baseline and the control.",
        examples=[{"tasks": {"n_train": 128, "n_eval": 256, "n_reserve": 512}}],
    )

    _safe_name = field_validator("name")(safe_label)

    def run_config(self, seed: int) -> RunConfig:
        """The run config of one seed."""
        config = self.run.model_copy(deep=True)
        config.name = f"{self.name or 'experiment'}-seed{seed}"
        config.tasks.seed = seed
        config.tasks.eval_seed = self.eval_seed
        config.baseline.enabled = True
        config.baseline.start = "cold_start"
        config.baseline.equal_tokens = True
        config.control.enabled = True
        return config


class ExperimentInfo(BaseModel):
    """An experiment as `GET /v1/experiments/{id}` reports it."""

    id: str = Field(description="Experiment id.", examples=["exp-20261203-101500-1a2b3c"])
    name: str | None = Field(default=None, description="The config's label.", examples=["score-vs-distill"])
    state: ExperimentState = Field(description="running | succeeded | failed.", examples=["running"])
    runs: dict[str, str] = Field(default_factory=dict, description="Run id of each seed started so far.",
                                 examples=[{"0": "run-20261203-101500-3f2a9c"}])
    error: str | None = Field(default=None, description="Why it failed.",
                              examples=["run run-20261203-101500-3f2a9c (seed 0) failed: stage mps: ..."])
    created_at: float = Field(description="Unix time of creation.", examples=[1796292900.0])
    artifacts: str = Field(description="Folder of results.json, report.md and plots.",
                           examples=["/data/score/experiments/exp-20261203-101500-1a2b3c"])
    config: ExperimentConfig = Field(description="The experiment's config, defaults filled in.")
    summary: dict[str, Any] | None = Field(
        default=None, description="Per-arm pooled success and the comparisons, once finished (see results.json).",
        examples=[{"arms": {"score_rl": {"success": 0.31, "n": 768}}, "comparisons": []}],
    )
