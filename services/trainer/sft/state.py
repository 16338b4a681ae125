"""Intermediate training state: what a killed job needs to continue exactly where it stopped.

    state/step-<N>/trainable.pt   trainable parameters (all weights, or only the LoRA adapters)
    state/step-<N>/optimizer.pt   AdamW moments
    state/step-<N>/scheduler.pt   learning-rate schedule position
    state/step-<N>/rng.pt         torch / Python RNG states of every rank
    state/step-<N>/state.json     step (= data position: the schedule is rebuilt from the seed), counters
    state/latest.json             which step directory is current

A step directory is written under a temporary name and renamed (never half there), and `latest.json` is
replaced atomically after it, so a crash at any point leaves the previous state usable.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import torch

from shared.fsutil import atomic_directory, write_json_atomic

LATEST = "latest.json"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu() for name, p in model.named_parameters() if p.requires_grad}


def save_state(
    root: Path, *, step: int, model, optimizer, scheduler, rng_states: list[dict], counters: dict
) -> Path:
    """Write the state after `step` optimizer steps; older step directories are removed afterwards."""
    target = root / f"step-{step:08d}"
    with atomic_directory(target) as tmp:
        torch.save(trainable_state(model), tmp / "trainable.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        torch.save(rng_states, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, **counters}, indent=2))
    write_json_atomic(root / LATEST, {"step": step, "dir": target.name})
    for old in root.glob("step-*"):
        if old.name != target.name:
            shutil.rmtree(old, ignore_errors=True)
    return target


def latest_state_dir(root: Path) -> Path | None:
    try:
        pointer = json.loads((root / LATEST).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    directory = root / pointer["dir"]
    return directory if (directory / "state.json").is_file() else None


def load_state(directory: Path, *, model, optimizer, scheduler, rank: int) -> dict:
    """Restore parameters, optimizer, scheduler and this rank's RNG; returns the saved counters (with `step`)."""
    saved = torch.load(directory / "trainable.pt", map_location="cpu")
    params = dict(model.named_parameters())
    missing = [name for name, p in params.items() if p.requires_grad and name not in saved]
    if missing:
        raise RuntimeError(f"training state {directory} lacks parameters {missing[:3]}... (different model?)")
    with torch.no_grad():
        for name, tensor in saved.items():
            params[name].copy_(tensor)
    optimizer.load_state_dict(torch.load(directory / "optimizer.pt", map_location="cpu", weights_only=False))
    scheduler.load_state_dict(torch.load(directory / "scheduler.pt", weights_only=False))
    rng_states = torch.load(directory / "rng.pt", weights_only=False)
    set_rng_state(rng_states[min(rank, len(rng_states) - 1)])
    return json.loads((directory / "state.json").read_text())
