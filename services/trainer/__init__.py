"""The trainer service: SFT jobs and GRPO updates with versioned checkpoints."""
