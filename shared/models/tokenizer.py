"""The byte-level BPE tokenizer of the built-in tiny models, trained locally in about a second.

The pipeline is exactly the one transformers rebuilds for any `model_type: qwen2` checkpoint
(`Qwen2Tokenizer`: NFC normaliser, Qwen2's split regex, byte-level without its own regex).
`AutoTokenizer` — and therefore vLLM — ignores a saved pipeline for Qwen2 checkpoints and rebuilds
that one from the vocabulary and merges; training with the same pipeline means the tokenizer we
train, the one a service loads and the one vLLM loads all produce the same ids.

Byte-level with all 256 bytes in the initial alphabet, so every string encodes without an unknown
token and decodes back to itself (after NFC normalisation, which Qwen2's pipeline imposes).
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from shared.agent.prompts import TAGS

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
PAD_TOKEN, _, EOS_TOKEN = SPECIAL_TOKENS
MODEL_MAX_LENGTH = 4096

# Plain ChatML. The {% generation %} markers do not change the rendered text; they let
# `apply_chat_template(..., return_assistant_tokens_mask=True)` mark the assistant's own tokens
# (content and the closing <|im_end|> it must learn to emit) for loss masking.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{%- if message['role'] == 'assistant' %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- generation %}{{- message['content'] + '<|im_end|>' }}{%- endgeneration %}"
    "{{- '\\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def _bpe_backend() -> Tokenizer:
    """An untrained BPE with Qwen2's normaliser, pre-tokeniser and decoder."""
    backend = Tokenizer(models.BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix=""))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    return backend


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2048) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on `texts`; `len()` of the result is at most `vocab_size`.

    The agent tags are added tokens (one id each, decoded as text, kept by skip_special_tokens);
    the ChatML markers are special tokens.
    """
    minimum = len(SPECIAL_TOKENS) + 256 + len(TAGS)
    if vocab_size < minimum:
        raise ValueError(f"vocab_size must be at least {minimum} (specials, 256 bytes and the agent tags)")
    backend = _bpe_backend()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(TAGS),  # leave room for the tags added below
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    backend.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in TAGS])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # Qwen2Tokenizer sets this on load; setting it here keeps trained and loaded tokenizers equal.
        unk_token=PAD_TOKEN,
        padding_side="left",  # transformers 5 saves only what the constructor was given
        chat_template=CHATML_TEMPLATE,
        model_max_length=MODEL_MAX_LENGTH,
    )
