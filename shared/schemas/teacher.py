"""The teacher's wire formats: corrections (first critical error + corrected step), judgements and rollouts."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, create_model, field_validator

from shared.schemas.agent import MAX_TRAJECTORY_STEPS, Episode, Step, Task, TrueAnswer
from shared.schemas.rollout import RolloutItem

Strategy = Literal["verify", "judge"]
MAX_CORRECTION_ITEMS = 256
MAX_JUDGEMENT_ITEMS = 1024
MAX_TEACHER_ROLLOUT_ITEMS = 512

# One built-in task and a student trajectory for it whose second act step subtracts the wrong number.
_EXAMPLE_TASK = {"id": "arith-dc23fdeb16", "true_answer": 989,
                 "question": "Take the number 747, then add 822, then subtract 580. What number do you get?"}
_EXAMPLE_PLAN = {"kind": "plan", "thought": "There are 2 operations to apply to 747: add 822, subtract 580. I will "
                 "apply them one at a time in Python and print each intermediate result."}
_EXAMPLE_STEPS = [
    _EXAMPLE_PLAN,
    {"kind": "act", "thought": "Start from 747: add 822.", "code": "a = 747 + 822\nprint(a)", "observation": "1569"},
    {"kind": "act", "thought": "That gives 1569. Next: subtract 580.", "code": "b = a - 508\nprint(b)",
     "observation": "1061"},
    {"kind": "act", "thought": "That gives 1061, which is the final result.", "code": "final_answer_print(b)",
     "observation": "1061"},
]


class GradedTask(Task):
    """A task whose gold answer is known (corrections and judgements need it)."""

    true_answer: TrueAnswer | None = Field(
        description="Gold answer: a string, a number, or a list of accepted aliases. Required here.", examples=[989],
    )

    @field_validator("true_answer")
    @classmethod
    def _required(cls, value: TrueAnswer | None) -> TrueAnswer:
        if value is None:
            raise ValueError("true_answer is required: the teacher judges against the gold answer")
        if isinstance(value, list) and not value:
            raise ValueError("true_answer alias list must not be empty")
        return value


def check_trajectory(steps: list[Step]) -> list[Step]:
    """A trajectory as the agent format produces it: the plan first, then act steps with code (or a parse error)."""
    for index, step in enumerate(steps):
        if index == 0 and step.kind != "plan":
            raise ValueError("steps[0] must be the `plan` step")
        if index > 0 and step.kind != "act":
            raise ValueError(f"steps[{index}] must be an `act` step (only the first step is the plan)")
        if step.kind == "act" and not (step.code or "").strip() and step.parse_error is None:
            raise ValueError(f"steps[{index}].code must not be empty for an `act` step (unless parse_error says why)")
    return steps


class CorrectionItem(BaseModel):
    """One failed student trajectory to correct."""

    model_config = ConfigDict(extra="forbid")

    task: GradedTask = Field(description="The task, with its gold answer (`true_answer`).")
    steps: list[Step] = Field(
        min_length=1, max_length=MAX_TRAJECTORY_STEPS,
        description="The student's trajectory: the plan, then act steps. Observations are recomputed by "
        "re-executing the code in a fresh sandbox, so those sent are only informative.",
    )

    @field_validator("steps")
    @classmethod
    def _shape(cls, steps: list[Step]) -> list[Step]:
        return check_trajectory(steps)


class CorrectionRequest(BaseModel):
    """Locate the first critical error of each trajectory and write the corrected step."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "items": [{"task": _EXAMPLE_TASK, "steps": _EXAMPLE_STEPS}], "strategy": "verify",
    }]})

    items: list[CorrectionItem] = Field(
        min_length=1, max_length=MAX_CORRECTION_ITEMS, description="Trajectories to correct; answered in this order."
    )
    strategy: Strategy = Field(
        default="verify",
        description="`verify`: model-agnostic and checked — the teacher's own step at every prefix is executed, "
        "the first step whose effect differs and from which the teacher reaches the gold answer is the error. "
        "`judge`: the paper's way — the teacher reads the trajectory and names the error (JSON), then writes the "
        "corrected step, which is executed.",
        examples=["verify"],
    )


class Cost(BaseModel):
    """What the teacher's work (a correction, a judgement, an episode) cost."""

    teacher_calls: int = Field(
        default=0, description="Teacher model calls (generations). The scripted expert counts the calls a model "
        "teacher would make for the same steps.", examples=[2],
    )
    teacher_tokens: int = Field(
        default=0, description="Tokens the teacher wrote. The scripted expert reports the tokens its steps would "
        "take in the teacher's tokenizer (text and end-of-turn token), so budgets compare across backends.",
        examples=[184],
    )
    teacher_prompt_tokens: int = Field(
        default=0, description="Prompt tokens the teacher read (every call's whole prompt; the expert: what a model "
        "teacher's prompts would hold).", examples=[1260],
    )
    rollout_tokens: int = Field(
        default=0, description="Of `teacher_tokens`: written in full rollouts from a divergent prefix (verify).",
        examples=[96],
    )
    rollout_prompt_tokens: int = Field(
        default=0, description="Of `teacher_prompt_tokens`: read in full rollouts (verify).", examples=[900],
    )
    judge_tokens: int = Field(
        default=0, description="Of `teacher_tokens`: written as judgements (the judge's verdicts, step and answer "
        "equivalence by model).", examples=[60],
    )
    judge_prompt_tokens: int = Field(
        default=0, description="Of `teacher_prompt_tokens`: read for judgements.", examples=[700],
    )
    full_rollouts: int = Field(
        default=0, description="Teacher rollouts run to a final answer (verify only).", examples=[1],
    )
    sandbox_runs: int = Field(
        default=0, description="Sandboxes started to replay prefixes and execute steps.", examples=[4],
    )

    def add(self, other: "Cost") -> "Cost":
        return Cost(**{name: getattr(self, name) + getattr(other, name) for name in Cost.model_fields})

    def as_rollout(self) -> "Cost":
        """This cost, its tokens marked as spent in a full rollout."""
        return self.model_copy(update={"rollout_tokens": self.teacher_tokens,
                                       "rollout_prompt_tokens": self.teacher_prompt_tokens})

    def as_judgement(self) -> "Cost":
        """This cost, its tokens marked as spent on a judgement."""
        return self.model_copy(update={"judge_tokens": self.teacher_tokens,
                                       "judge_prompt_tokens": self.teacher_prompt_tokens})


class Correction(BaseModel):
    """The teacher's verdict on one trajectory."""

    task_id: str = Field(description="Id of the corrected task.", examples=["arith-dc23fdeb16"])
    strategy: Strategy = Field(description="The strategy that produced this correction.", examples=["verify"])
    answer_correct: bool = Field(
        description="Whether the trajectory's own final answer already matches the gold answer.", examples=[False],
    )
    first_error_step: int | None = Field(
        description="0-based index into `steps` of the first critical error; null when there is nothing to correct "
        "or the trajectory is `hard`; 0 when `verify` found the plan to be the error. (The paper's official code "
        "counts from 1.)",
        examples=[2],
    )
    analysis: str = Field(
        default="", description="Why that step is the first critical error.",
        examples=["Step 2 subtracts 508 instead of 580, so every later value is off by 72."],
    )
    corrected_step: Step | None = Field(
        default=None,
        description="The step to put in place of `steps[first_error_step]`: thought, code and the observation its "
        "code printed when executed after the verified prefix `steps[:first_error_step]` (a plan, with a thought "
        "only, when the plan is corrected).",
    )
    hard: bool = Field(description="True when no usable repair was found; `reason` says why.", examples=[False])
    reason: str | None = Field(
        default=None, description="Why the trajectory is hard (null otherwise).",
        examples=["the teacher's own rollout from this prefix did not reach the gold answer"],
    )
    cost: Cost = Field(description="What this correction cost.")


class CorrectionResponse(BaseModel):
    corrections: list[Correction] = Field(description="One correction per item, in item order.")
    cost: Cost = Field(description="The request's total cost.")
    engine: str = Field(
        description="The teacher backend that answered: `expert`, `transformers` or `openai`.", examples=["expert"],
    )


# ---- judgements -------------------------------------------------------------------------------------------

class AnswerJudgementItem(BaseModel):
    """Is a predicted final answer equivalent to the gold answer?"""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["answer"] = Field(description="Answer equivalence.")
    prediction: str | None = Field(description="The final answer given (null: none was given).", examples=["989"])
    true_answer: TrueAnswer = Field(
        description="Gold answer: a string, a number, or a list of accepted aliases.", examples=[989],
    )
    question: str | None = Field(
        default=None, description="The task's question; shown to the teacher model if asked.",
        examples=["Take the number 747, then add 822, then subtract 580. What number do you get?"],
    )
    use_teacher: bool = Field(
        default=False,
        description="When the programmatic scorers (math-verify, normalised exact match) say no, ask the teacher "
        "model for a verdict (needs a model backend).",
        examples=[False],
    )

    @field_validator("true_answer")
    @classmethod
    def _aliases(cls, value: TrueAnswer) -> TrueAnswer:
        if isinstance(value, list) and not value:
            raise ValueError("true_answer alias list must not be empty")
        return value


class StepJudgementItem(BaseModel):
    """Is `candidate` the same action as `steps[index]`, both taken after `steps[:index]`? (RL key-step reward.)"""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["step"] = Field(description="Step equivalence.")
    task: Task = Field(description="The task the steps belong to.")
    steps: list[Step] = Field(min_length=1, max_length=MAX_TRAJECTORY_STEPS,
                              description="A trajectory holding the reference step at `index`.")
    index: int = Field(
        ge=0, lt=MAX_TRAJECTORY_STEPS, description="0-based index of the reference step in `steps`; `steps[:index]` is the prefix.",
        examples=[1],
    )
    candidate: Step = Field(description="The step to compare with `steps[index]`.")
    use_teacher: bool = Field(
        default=False,
        description="Ask the teacher model instead of comparing observations after execution (needs a model backend).",
        examples=[False],
    )

    @field_validator("steps")
    @classmethod
    def _shape(cls, steps: list[Step]) -> list[Step]:
        return check_trajectory(steps)

    @field_validator("index")
    @classmethod
    def _index_in_range(cls, index: int, info: ValidationInfo) -> int:
        steps = info.data.get("steps")
        if steps is not None and index >= len(steps):
            raise ValueError(f"index {index} is outside the trajectory ({len(steps)} steps: 0-{len(steps) - 1})")
        return index


JudgementItem = Annotated[Union[AnswerJudgementItem, StepJudgementItem], Field(discriminator="kind")]


class JudgementRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"items": [
        {"kind": "answer", "prediction": "989.0", "true_answer": 989, "question": _EXAMPLE_TASK["question"]},
        {"kind": "step", "task": _EXAMPLE_TASK, "steps": _EXAMPLE_STEPS[:3], "index": 2,
         "candidate": {"kind": "act", "thought": "Subtract 580 from 1569.", "code": "c = a - 580\nprint(c)"}},
    ]}]})

    items: list[JudgementItem] = Field(
        min_length=1, max_length=MAX_JUDGEMENT_ITEMS, description="Answer or step judgements, answered in this order."
    )


class Judgement(BaseModel):
    kind: Literal["answer", "step"] = Field(description="What was judged.", examples=["answer"])
    equivalent: bool = Field(description="The verdict: same answer / same action.", examples=[True])
    method: Literal["math", "exact", "f1", "none", "execution", "teacher"] = Field(
        description="What decided: a programmatic scorer (`math`, `exact`, `f1`, `none` = no prediction), "
        "`execution` (observations compared after running both steps) or `teacher` (the teacher model).",
        examples=["math"],
    )
    f1: float | None = Field(
        default=None, description="Answer judgements: token F1 with the best alias.", examples=[1.0],
    )
    reference_observation: str | None = Field(
        default=None, description="Step judgements: what the reference step printed.", examples=["1569"],
    )
    candidate_observation: str | None = Field(
        default=None, description="Step judgements: what the candidate printed.", examples=["1569"],
    )
    detail: str = Field(
        default="", description="A short explanation (the teacher's words when it decided).",
        examples=["math-verify: 989 == 989"],
    )
    cached: bool = Field(
        default=False, description="True when the result came from the judgement cache.", examples=[False],
    )


class JudgementResponse(BaseModel):
    judgements: list[Judgement] = Field(description="One judgement per item, in item order.")
    cost: Cost = Field(description="What the judgements cost (cached ones cost nothing).")


# ---- rollouts ---------------------------------------------------------------------------------------------

class TeacherRolloutRequest(BaseModel):
    """Let the teacher solve each task from scratch, or continue it from a trusted prefix, in the agent format."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{
        "items": [{"task": _EXAMPLE_TASK, "prefix_steps": [_EXAMPLE_PLAN]}], "max_turns": 8,
    }]})

    items: list[RolloutItem] = Field(
        min_length=1, max_length=MAX_TEACHER_ROLLOUT_ITEMS,
        description="Tasks to solve, each with an optional `prefix_steps`; answered in this order.",
    )
    max_turns: int = Field(
        default=8, ge=1, le=32,
        description="Teacher turns after the prefix (the plan counts as a turn when there is no prefix).",
        examples=[8],
    )


# Token ids, loss masks and logprobs are the student's training data; a teacher episode (possibly from a
# remote server) carries none, so it takes only these of `Episode`'s fields, descriptions included.
_TEACHER_EPISODE_FIELDS = ("task_id", "steps", "final_answer", "finished", "stop_reason", "n_prefix_steps")
_EpisodeFields = create_model(
    "_EpisodeFields",
    **{name: (Episode.model_fields[name].annotation, Episode.model_fields[name]) for name in _TEACHER_EPISODE_FIELDS},
)


class TeacherEpisode(_EpisodeFields):
    """One teacher episode: `Episode`'s step-level fields and what the episode cost the teacher."""

    cost: Cost = Field(description="What this episode cost: teacher calls, generated and prompt tokens, sandboxes.")

    def to_episode(self) -> Episode:
        """The same episode as the agent's `Episode` (without token-level data)."""
        return Episode(**{name: getattr(self, name) for name in _TEACHER_EPISODE_FIELDS})


class TeacherRolloutResponse(BaseModel):
    """The teacher's episodes, one per item in item order."""

    episodes: list[TeacherEpisode] = Field(description="One episode per item, in item order.")
    cost: Cost = Field(description="The request's total cost.")
    engine: str = Field(
        description="The teacher backend that answered: `expert`, `transformers` or `openai`.", examples=["expert"],
    )
