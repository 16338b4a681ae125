"""Teacher service configuration (CLI flags map onto these fields)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from shared.settings import Settings
from shared.tools.sandbox import SandboxLimits

EngineKind = Literal["expert", "transformers", "openai"]


@dataclass
class TeacherConfig:
    engine: EngineKind = "expert"           # expert: the built-in suite's scripted solver (no model)
    model: str | None = None                # model reference; None = the built-in tiny teacher (model engines)
    base_url: str | None = None             # OpenAI-compatible server for engine=openai, e.g. http://vllm:8000/v1
    served_model_name: str | None = None    # model name on that server; default: its first model
    device: str | None = None               # "cpu" / "cuda" for engine=transformers
    max_batch_size: int = 64                # most generations batched together (transformers)
    temperature: float = 0.0                # teacher sampling: greedy, so corrections are reproducible
    max_step_tokens: int = 256              # budget of one agent turn (a proposed or corrected step)
    max_judge_tokens: int = 384             # budget of the judge's JSON verdict
    rollout_max_turns: int = 8              # turns a full teacher rollout may take after the corrected step
    max_rollouts_per_item: int = 4          # verify: divergent prefixes tried before a trajectory is hard
    judge_attempts: int = 3                 # judge: tries per prompt before falling back to hard
    retry_temperature: float = 0.7          # judge retries sample at least this hot, or greedy would repeat itself
    max_concurrent_sandboxes: int = 8       # sandboxes replaying or executing at once (comparisons, judge, expert)
    max_concurrent_episodes: int = 64       # model-backend turns and rollouts in flight (one sandbox each)
    judgement_cache_size: int = 4096        # judgements remembered by content hash (LRU)
    search_corpus: str | None = None        # JSONL {id,title,text}; default: the built-in knowledge base
    sandbox: SandboxLimits = field(default_factory=SandboxLimits)
    settings: Settings = field(default_factory=Settings)
