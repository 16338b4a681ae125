"""GRPO: sessions the coordinator steps with rollout groups, one update per step, the loss math."""
