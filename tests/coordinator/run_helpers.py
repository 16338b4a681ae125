"""Submitting runs to a real coordinator process and waiting on them, for the end-to-end run tests."""

from __future__ import annotations

import json
import time

import httpx

from tests.service_process import ServiceProcess

QUICK_SFT = {"max_steps": 2, "cpu_threads": 1, "learning_rate": 1e-3}


def create_run(coordinator: ServiceProcess, config: dict) -> str:
    response = httpx.post(f"{coordinator.url}/v1/runs", json=config, timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["id"]


def wait_run(url: str, run_id: str, predicate, timeout_s: float, what: str) -> dict:
    deadline, run = time.monotonic() + timeout_s, {}
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/v1/runs/{run_id}", timeout=10)
            run = response.json() if response.status_code == 200 else run
        except httpx.HTTPError:
            pass
        if run and predicate(run):
            return run
        if run.get("state") in ("failed", "cancelled"):
            raise AssertionError(f"run {run['state']}: {run.get('error')}")
        time.sleep(0.3)
    raise TimeoutError(f"timed out waiting for {what}; last: {json.dumps(run)[:2000]}")
