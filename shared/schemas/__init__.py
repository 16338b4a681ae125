"""Pydantic models for every wire format, used by both sides of each call."""

from shared.schemas.agent import Episode, Step, StepKind, Task, TrueAnswer
from shared.schemas.sampling import SamplingParams

__all__ = ["Episode", "Step", "StepKind", "Task", "TrueAnswer", "SamplingParams"]
