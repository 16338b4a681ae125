"""Supervised fine-tuning: the jobs API, the job manager, and the training process each job runs."""
