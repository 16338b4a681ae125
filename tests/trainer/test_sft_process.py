"""The training process itself: torchrun with 2 CPU processes follows the single-process loss curve, and a
run resumed from an intermediate state continues exactly where the uninterrupted one went."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from services.trainer.sft.spec import STATE_DIR
from tests.trainer.sft_jobs import copy_job_inputs, gold_lines, make_job_dir, progress

pytestmark = pytest.mark.slow

HYPERPARAMETERS = dict(
    max_steps=6, learning_rate=3e-3, micro_batch_tokens=1024, max_seq_length=1024, log_every_steps=1,
    warmup_ratio=0.0, cpu_threads=1, device="cpu",
)


def _run(command, job_dir, home):
    env = {**os.environ, "SCORE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command + ["-m", "services.trainer.sft.train", "--job-dir", str(job_dir)],
                            env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return progress(job_dir)


@pytest.fixture(scope="module")
def lines():
    return gold_lines(24)


def test_torchrun_two_processes_match_one_process(lines, student_model_dir, score_home, tmp_path):
    # Global batch 2 micro-batches per step: accumulation 2 on one process = accumulation 1 on each of 2.
    single = make_job_dir(tmp_path / "single", base_path=student_model_dir, home=score_home, lines=lines,
                          gradient_accumulation_steps=2, **HYPERPARAMETERS)
    double = make_job_dir(tmp_path / "ddp", base_path=student_model_dir, home=score_home, lines=lines,
                          gradient_accumulation_steps=1, nproc=2, **HYPERPARAMETERS)
    one = _run([sys.executable], single, score_home)
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"], double, score_home)
    losses_one = [r["metrics"]["loss"] for r in one]
    losses_two = [r["metrics"]["loss"] for r in two]
    assert len(losses_one) == len(losses_two) == 6
    assert losses_one[-1] < losses_one[0]  # it learns
    torch.testing.assert_close(torch.tensor(losses_two), torch.tensor(losses_one), rtol=2e-4, atol=2e-4)
    assert [r["metrics"]["tokens_seen"] for r in one] == [r["metrics"]["tokens_seen"] for r in two]
    started = progress(double, "started")[0]
    assert started["nproc"] == 2


def test_resume_from_intermediate_state_continues_the_same_run(lines, student_model_dir, score_home, tmp_path):
    full = make_job_dir(tmp_path / "full", base_path=student_model_dir, home=score_home, lines=lines,
                        save_every_steps=3, **HYPERPARAMETERS)
    uninterrupted = _run([sys.executable], full, score_home)
    # A second job directory that holds only the inputs and the state written after step 3, as a job
    # killed between steps 3 and 6 would.
    resumed_dir = copy_job_inputs(full, tmp_path / "resumed")
    shutil.copytree(full / STATE_DIR, resumed_dir / STATE_DIR)
    assert (resumed_dir / STATE_DIR / "step-00000003").is_dir()
    resumed = _run([sys.executable], resumed_dir, score_home)
    assert progress(resumed_dir, "started")[0]["resumed_from_step"] == 3
    assert [r["step"] for r in resumed] == [4, 5, 6]
    torch.testing.assert_close(
        torch.tensor([r["metrics"]["loss"] for r in resumed]),
        torch.tensor([r["metrics"]["loss"] for r in uninterrupted[3:]]), rtol=1e-5, atol=1e-5,
    )
    assert [r["metrics"]["learning_rate"] for r in resumed] == [r["metrics"]["learning_rate"] for r in uninterrupted[3:]]


def test_lora_job_publishes_a_merged_checkpoint(lines, student_model_dir, score_home, tmp_path):
    from transformers import AutoModelForCausalLM

    job = make_job_dir(tmp_path / "lora", base_path=student_model_dir, home=score_home, lines=lines,
                       lora=True, lora_r=4, lora_alpha=8, **{**HYPERPARAMETERS, "max_steps": 3, "learning_rate": 1e-2})
    records = _run([sys.executable], job, score_home)
    assert len(records) == 3
    published = progress(job, "published")[0]["checkpoint"]
    merged = AutoModelForCausalLM.from_pretrained(published["path"], local_files_only=True)
    base = AutoModelForCausalLM.from_pretrained(student_model_dir, local_files_only=True)
    assert not any("lora" in name for name in merged.state_dict())  # a plain checkpoint the student can load
    changed = [name for name, p in merged.state_dict().items() if not torch.equal(p, base.state_dict()[name])]
    assert changed and all(any(m in name for m in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                     "down_proj")) for name in changed)
