"""Model loading, the built-in tiny models and their tokenizer, and generation engines."""
