"""A tokenizer's identity for token-level exchanges: two tokenizers whose vocabularies (every token and its id)
hash the same map every token id to the same token, whatever their names or files."""

from __future__ import annotations

import hashlib
import json

from shared.schemas.logprobs import TokenizerInfo


def tokenizer_info(tokenizer, name: str | None = None) -> TokenizerInfo:
    vocab = tokenizer.get_vocab()  # added and special tokens included
    ordered = sorted(vocab.items(), key=lambda item: (item[1], item[0]))
    digest = hashlib.sha256(json.dumps(ordered, ensure_ascii=False).encode("utf-8")).hexdigest()
    label = name or getattr(tokenizer, "name_or_path", "") or "unnamed"
    return TokenizerInfo(name=str(label)[:512], vocab_size=len(vocab), fingerprint=digest)
