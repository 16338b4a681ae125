"""bench/validation_runs.py: the run it submits for a setting is the experiment's, on validation tasks only."""

import importlib.util
import json
from pathlib import Path

import pydantic
import pytest
import yaml

from shared.schemas.experiments import ExperimentConfig

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("validation_runs", ROOT / "bench" / "validation_runs.py")
validation_runs = importlib.util.module_from_spec(spec)
spec.loader.exec_module(validation_runs)

EXPERIMENT = ExperimentConfig.model_validate(yaml.safe_load((ROOT / "configs" / "experiment.yaml").read_text()))


def test_a_setting_changes_only_its_field_and_the_run_never_evaluates_held_out_tasks():
    plain = validation_config_for([])
    changed = validation_config_for(["sft.replay_bc_init=0.25", "rl.hyperparameters.learning_rate=3e-5"])
    assert changed.tasks.eval_split == plain.tasks.eval_split == "validation"
    assert not changed.baseline.enabled and not changed.control.enabled
    assert changed.sft.replay_bc_init == 0.25 and plain.sft.replay_bc_init == EXPERIMENT.run.sft.replay_bc_init
    assert changed.rl.hyperparameters.learning_rate == 3e-5
    assert changed.tasks.seed == 2 and changed.bc_init == plain.bc_init


def test_a_setting_that_is_not_a_field_fails_before_anything_starts():
    with pytest.raises(pydantic.ValidationError, match="replay_bc_nit"):
        validation_config_for(["sft.replay_bc_nit=0.25"])
    with pytest.raises(SystemExit, match="PATH=VALUE"):
        validation_config_for(["sft.replay_bc_init"])


def validation_config_for(settings):
    return validation_runs.validation_config(EXPERIMENT, 2, settings, "t")


def test_compare_pairs_the_same_tasks_of_the_same_seed(tmp_path, capsys):
    def row(label, seed, outcomes):
        return {"label": label, "seed": seed, "eval": {"sft": {"outcomes": outcomes}}}

    out = tmp_path / "val.jsonl"
    out.write_text("\n".join(json.dumps(r) for r in [
        row("a", 0, {"t1": 0, "t2": 0, "t3": 1, "t4": 1}), row("b", 0, {"t1": 1, "t2": 1, "t3": 1, "t4": 0}),
        row("a", 1, {"t1": 1}), row("c", 1, {"t1": 0})]) + "\n")
    args = validation_runs.argparse.Namespace(out=str(out), compare=["a", "b"], policy="sft")
    assert validation_runs.compare(args) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[2].split()[:4] == ["0", "50.0%", "75.0%", "+25.0%"]  # seed 1 has no "b" run: not paired
    assert lines[3].split()[:2] == ["pooled", "+25.0%"]
