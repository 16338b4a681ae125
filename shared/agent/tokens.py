"""Token-exact assembly of multi-turn episodes with the model's own chat template.

Generated tokens are kept as the model produced them; only the turns we add
(observations, the plan acknowledgement) are tokenised here. The text that
separates an assistant turn from the next generation prompt is derived from
the chat template itself, so any template works, not only ChatML.
"""

from __future__ import annotations

_MARK = "\u2063SCORE-TURN-END\u2063"


def chat_token_ids(tokenizer, messages: list[dict], *, add_generation_prompt: bool) -> list[int]:
    """apply_chat_template as a plain list of ids (transformers 5 returns a BatchEncoding)."""
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, tokenize=True)
    if hasattr(encoded, "keys") and "input_ids" in encoded:
        encoded = encoded["input_ids"]
    if encoded and isinstance(encoded[0], list):
        encoded = encoded[0]
    return [int(t) for t in encoded]


def tool_turn_ids(tokenizer, user_text: str, *, model_emitted_eos: bool) -> list[int]:
    """Tokens from the end of the model's turn to the next assistant prompt, carrying `user_text`."""
    base = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}, {"role": "assistant", "content": _MARK}]
    rendered = tokenizer.apply_chat_template(
        base + [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=False
    )
    suffix = rendered[rendered.index(_MARK) + len(_MARK):]
    eos = tokenizer.eos_token or ""
    if model_emitted_eos and eos and suffix.startswith(eos):
        suffix = suffix[len(eos):]  # the model already produced the end-of-turn token
    return list(tokenizer(suffix, add_special_tokens=False)["input_ids"])


def closing_ids(tokenizer, *, model_emitted_eos: bool) -> list[int]:
    """Tokens that close a truncated final turn (the end-of-turn token the model never produced)."""
    if model_emitted_eos or not tokenizer.eos_token:
        return []
    return list(tokenizer(tokenizer.eos_token, add_special_tokens=False)["input_ids"])
