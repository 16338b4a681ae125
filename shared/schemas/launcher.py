"""The pipe between the trainer and its warm launcher (`services/trainer/sft/zygote.py`): one JSON object a line.

The trainer writes `LaunchRequest`s to the launcher's stdin; the launcher answers on its stdout with `Ready`
once (the training module is imported), one `Launched` or `Refused` per request, in order, and an `Exited`
whenever one of its children ends.
"""

from __future__ import annotations

from typing import Annotated, Literal, Union

from pydantic import BaseModel, Field, TypeAdapter


class LaunchRequest(BaseModel):
    type: Literal["launch"] = "launch"
    id: str                  # echoed in the answer (the job id)
    argv: list[str]          # the training module's `main(argv)`
    env: dict[str, str]      # the child's whole environment
    cwd: str
    log_path: str            # the child's stdout and stderr, appended


class Ready(BaseModel):
    type: Literal["ready"] = "ready"
    pid: int


class Launched(BaseModel):
    type: Literal["launched"] = "launched"
    id: str
    pid: int                 # also the child's session and process group


class Refused(BaseModel):
    type: Literal["refused"] = "refused"
    id: str
    reason: str
    usable: bool = True      # False: the launcher will refuse every request (start training processes fresh)


class Exited(BaseModel):
    type: Literal["exited"] = "exited"
    pid: int
    code: int                # as `Popen.returncode`: the exit status, or -N for signal N


LauncherMessage = Annotated[Union[Ready, Launched, Refused, Exited], Field(discriminator="type")]
LAUNCHER_MESSAGE: TypeAdapter[LauncherMessage] = TypeAdapter(LauncherMessage)
