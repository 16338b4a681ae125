"""LoRA settings shared by SFT jobs and GRPO sessions: one definition, so both train adapters the same way."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator

DEFAULT_TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class LoRASettings(BaseModel):
    """Whether to train a PEFT LoRA adapter instead of all weights, and the shape of a new adapter."""

    lora: bool = Field(
        default=False,
        description="Train LoRA adapters (PEFT) instead of all weights. A base that is itself an adapter "
        "checkpoint is continued (its own rank and target modules are kept); with `lora: false` such a base is "
        "merged into its base model and all weights train.",
        examples=[False],
    )
    lora_r: int = Field(
        default=16, ge=1, le=1024,
        description="LoRA rank of a new adapter: adapter capacity; memory grows with it. vLLM refuses adapters "
        "above its `--max-lora-rank`.",
        examples=[16],
    )
    lora_alpha: int = Field(
        default=32, ge=1, le=65536, description="LoRA scaling numerator of a new adapter (scale = lora_alpha / lora_r).",
        examples=[32],
    )
    lora_dropout: float = Field(
        default=0.0, ge=0, lt=1, description="Dropout on the LoRA input path of a new adapter.", examples=[0.05],
    )
    lora_target_modules: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TARGET_MODULES),
        description="Module names that get adapters in a new adapter (Qwen2/Llama projection names by default).",
        examples=[["q_proj", "v_proj"]],
    )

    @model_validator(mode="after")
    def _lora_targets(self) -> "LoRASettings":
        if self.lora and not self.lora_target_modules:
            raise ValueError("lora is on but lora_target_modules is empty: name the modules to adapt")
        return self
