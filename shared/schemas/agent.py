"""Tasks, steps and episodes: the agent's data as it crosses every service boundary."""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

StepKind = Literal["plan", "act"]

# The most steps a request may ask a service to execute or replay for one trajectory (a plan and its act
# steps). Replaying runs every step's code again, each up to the sandbox's step timeout, so the count is
# bounded here and the time by the per-episode deadline (`SCORE_STUDENT_EPISODE_TIMEOUT_S`).
MAX_TRAJECTORY_STEPS = 128
# Upper bounds of counters that travel in requests (policy versions, token ids): 32-bit, like the engines'.
MAX_POLICY_VERSION = 2**31 - 1
MAX_TOKEN_ID = 2**31 - 1
# Numbers given as gold answers: exact integers up to 10^18 and finite floats; larger values go as strings.
AnswerInt = Annotated[int, Field(ge=-(10**18), le=10**18)]
AnswerFloat = Annotated[float, Field(ge=-1e300, le=1e300)]
TrueAnswer = Union[str, AnswerInt, AnswerFloat, list[str]]


class Task(BaseModel):
    """One task in the paper's released format; extra fields are kept as they are."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(min_length=1, description="Unique task id within its suite or file.", examples=["arith-dc23fdeb16"])
    question: str = Field(
        min_length=1, description="The task as the user asks it.",
        examples=["Take the number 747, then add 822, then subtract 580. What number do you get?"],
    )
    true_answer: TrueAnswer | None = Field(
        default=None,
        description="Gold answer: a string, a number, or a list of accepted aliases. "
        "Optional for generation; required wherever correctness is judged.",
        examples=[989],
    )

    @field_validator("true_answer")
    @classmethod
    def _aliases_not_empty(cls, value: TrueAnswer | None) -> TrueAnswer | None:
        if isinstance(value, list) and not value:
            raise ValueError("true_answer alias list must not be empty")
        return value

    def answers(self) -> list[str]:
        """The gold answer as a list of accepted strings."""
        if self.true_answer is None:
            return []
        if isinstance(self.true_answer, list):
            return [str(a) for a in self.true_answer]
        return [str(self.true_answer)]


class Step(BaseModel):
    """One assistant turn: the plan (`<first_thought>`) or an action (`<thought>` + `<code>`) and its observation."""

    model_config = ConfigDict(extra="allow")

    kind: StepKind = Field(
        description="`plan` is the first-thought turn (no code); `act` is a thought + code turn.", examples=["act"],
    )
    thought: str = Field(default="", description="The step's reasoning text.", examples=["Start from 747: add 822."])
    code: str | None = Field(
        default=None, description="Python code the step runs in the episode's sandbox (`act` only).",
        examples=["a = 747 + 822\nprint(a)"],
    )
    observation: str | None = Field(
        default=None, description="What running the code printed (or the error it raised); null for `plan` steps.",
        examples=["1569"],
    )
    raw: str | None = Field(
        default=None, description="The model's raw text for this turn, when it came from a model.",
        examples=["<thought>Start from 747: add 822.</thought>\n<code>a = 747 + 822\nprint(a)</code>"],
    )
    parse_error: str | None = Field(
        default=None, description="Why the raw turn did not follow the agent format, if it did not.",
        examples=["no <code> block in an act turn"],
    )

    @model_validator(mode="after")
    def _plan_has_no_code(self) -> "Step":
        if self.kind == "plan" and self.code:
            raise ValueError("a `plan` step carries no code")
        return self


class Episode(BaseModel):
    """One agent episode. Rollouts from the student service add token-exact training data."""

    model_config = ConfigDict(extra="allow")

    task_id: str = Field(description="Id of the task this episode attempts.", examples=["arith-dc23fdeb16"])
    steps: list[Step] = Field(default_factory=list, description="Prefix steps (if any) followed by the model's steps.")
    final_answer: str | None = Field(
        default=None, description="What `final_answer_print` received, as a string.", examples=["989"],
    )
    finished: bool = Field(
        default=False, description="True when the episode ended with a final answer.", examples=[True],
    )
    stop_reason: str | None = Field(
        default=None,
        description="Why the episode ended: `final_answer`, `max_turns`, `max_tokens` (context full), `prefix_only` "
        "or `timeout` (the episode's wall-clock deadline passed).",
        examples=["final_answer"],
    )
    n_prefix_steps: int = Field(
        default=0, description="How many of `steps` were given as `prefix_steps`.", examples=[1],
    )
    token_ids: list[int] = Field(
        default_factory=list, description="Every token of the episode after the prompt's start, in order.",
        examples=[[12, 87, 301, 45, 9, 220]],
    )
    prompt_length: int = Field(
        default=0, description="How many leading entries of `token_ids` form the initial prompt.", examples=[2],
    )
    loss_mask: list[int] = Field(
        default_factory=list, description="Per token: 1 = generated by the model, 0 = prompt, prefix or observation.",
        examples=[[0, 0, 1, 1, 0, 1]],
    )
    logprobs: list[float] = Field(
        default_factory=list,
        description="Per token: the behaviour policy's log-probability (unscaled logits) for generated tokens, 0.0 elsewhere.",
        examples=[[0.0, 0.0, -0.21, -1.37, 0.0, -0.05]],
    )
    policy_version: int | None = Field(
        default=None, description="Weights version that generated every model token.", examples=[3],
    )
