"""The student service: OpenAI-compatible generation, agent rollouts with sandboxed tools, weight reload."""
