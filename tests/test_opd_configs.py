"""The shipped on-policy distillation configs stay valid against the run and experiment schemas."""

from pathlib import Path

import yaml

from shared.schemas.experiments import ExperimentConfig
from shared.schemas.run_config import RunConfig

ROOT = Path(__file__).resolve().parents[1]


def test_the_opd_bench_config_trains_the_opd_arm_only():
    config = RunConfig.model_validate(yaml.safe_load((ROOT / "configs" / "opd.yaml").read_text()))
    assert config.opd.enabled and config.opd.hyperparameters.teacher_kl_coef > 0 and config.opd.eval_every > 0
    assert config.rl.steps == 0 and not config.baseline.enabled and not config.score_opd.enabled


def test_the_opd_experiment_has_both_distillation_arms_at_equal_tokens():
    experiment = ExperimentConfig.model_validate(yaml.safe_load((ROOT / "configs" / "experiment-opd.yaml").read_text()))
    run = experiment.run_config(experiment.seeds[0])
    assert run.opd.enabled and run.opd.equal_tokens and run.score_opd.enabled and run.rl.steps > 0
    assert run.baseline.equal_tokens and run.control.enabled and run.tasks.n_reserve > 0
