"""Every SFT job a run submits is seeded from the run's seed, so an experiment's seeds differ in training too."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.coordinator.context import RunContext
from services.coordinator.stages.training import with_run_seed
from shared.schemas.experiments import ExperimentConfig
from shared.schemas.training import SFTHyperparameters

ROOT = Path(__file__).resolve().parents[2]


def context(config) -> RunContext:
    return RunContext(run_id="r", config=config, store=None, queue=None, services=None, run_dir=Path("."))


def test_each_seed_of_the_experiment_trains_with_its_own_seed():
    experiment = ExperimentConfig.model_validate(yaml.safe_load((ROOT / "configs/experiment.yaml").read_text()))
    for stage in ("bc_init", "sft", "baseline"):
        seeds = []
        for seed in experiment.seeds:
            config = experiment.run_config(seed)
            hyperparameters = getattr(config, stage).hyperparameters
            seeds.append(with_run_seed(context(config), hyperparameters).seed)
        # Before, every job of every seed trained with the trainer's default seed 0.
        assert seeds == list(experiment.seeds), stage


def test_a_configured_seed_offsets_the_runs_and_wraps():
    experiment = ExperimentConfig.model_validate({"seeds": [3], "run": {"tasks": {"suite": "builtin"}}})
    config = experiment.run_config(3)
    assert with_run_seed(context(config), SFTHyperparameters(seed=10)).seed == 13
    assert with_run_seed(context(config), SFTHyperparameters(seed=2**32 - 1)).seed == 2
    unchanged = SFTHyperparameters(seed=10, learning_rate=1e-3)
    seeded = with_run_seed(context(config), unchanged)
    assert unchanged.seed == 10 and seeded.learning_rate == 1e-3  # a copy: the run's config is not altered
