"""The limits of one sandboxed interpreter: a leaf module, so settings can name them without the sandbox itself."""

from __future__ import annotations

from pydantic import Field
from pydantic.dataclasses import dataclass as pydantic_dataclass


@pydantic_dataclass(frozen=True)
class SandboxLimits:
    """Limits of one sandboxed interpreter (set per service as a JSON object, e.g. SCORE_STUDENT_SANDBOX)."""

    step_timeout_s: float = Field(default=5.0, gt=0, description="Wall-clock limit of one code cell.")
    cpu_time_s: int = Field(default=20, ge=1, description="CPU seconds for the whole interpreter (RLIMIT_CPU).")
    memory_bytes: int = Field(default=512 * 2**20, ge=2**24, description="Address space of the interpreter "
                              "(RLIMIT_AS).")
    max_output_chars: int = Field(default=4000, ge=64, description="Observation cap; longer output is truncated "
                                  "with a marker.")
    max_file_bytes: int = Field(default=16 * 2**20, ge=0, description="Largest file the code may write "
                                "(RLIMIT_FSIZE).")
    max_open_files: int = Field(default=64, ge=16, description="Open file descriptors (RLIMIT_NOFILE).")
    disk_bytes: int = Field(default=64 * 2**20, ge=2**20, le=2**34, description="Disk quota of one episode: the "
                            "size of its tmpfs work dir (memory-backed; gone with the interpreter).")
