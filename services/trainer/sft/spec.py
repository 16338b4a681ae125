"""What the service hands a training process: the job directory's `spec.json` and the files around it.

    trainer/jobs/<id>/job.json        the job record (JobInfo), written by the service only
    trainer/jobs/<id>/spec.json       JobSpec: resolved base, output, hyperparameters
    trainer/jobs/<id>/dataset.jsonl   a snapshot of the training conversations (resume reads the same data)
    trainer/jobs/<id>/progress.jsonl  appended by the training process (rank 0), read by the service
    trainer/jobs/<id>/events.jsonl    the job's event log, written by the service
    trainer/jobs/<id>/state/          intermediate training state (see train_state.py)
    trainer/jobs/<id>/result.json     the published checkpoint, written last by the training process
    trainer/jobs/<id>/train.log       the training process's stdout and stderr
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from shared.schemas.training import SFTHyperparameters

SPEC = "spec.json"
DATASET = "dataset.jsonl"
PROGRESS = "progress.jsonl"
EVENTS = "events.jsonl"
RESULT = "result.json"
STATE_DIR = "state"
TRAIN_LOG = "train.log"
RUN_LOCK = ".run.lock"


class JobSpec(BaseModel):
    job_id: str
    base_path: str          # checkpoint directory the job starts from
    base_label: str         # lineage label: `name/vN`, `builtin:student` or a path
    output_name: str        # checkpoint series of the result
    checkpoints_dir: str    # CheckpointStore root
    hyperparameters: SFTHyperparameters
    tensorboard_dir: str | None = None  # where `report_to: [tensorboard]` writes (rank 0)
    dataset_name: str | None = None     # the dataset file's name, for the model card; None: rows given inline

    @classmethod
    def load(cls, job_dir: Path) -> "JobSpec":
        return cls.model_validate_json((job_dir / SPEC).read_text())
