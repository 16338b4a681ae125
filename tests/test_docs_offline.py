"""`/docs` and `/redoc` of every service, and a run's HTML report, render in a real headless browser with the
network cut off.

Chromium (Debian's `chromium`) loads each page from a service app served by uvicorn on loopback. Every other
host resolves to nothing and any other connection goes to a dead proxy, so an asset fetched from a CDN fails
exactly as on a machine without internet. A stock FastAPI app's `/docs` is the control: under the same cut it
must stay blank, which shows the cut is real.
"""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from tests.service_apps import SERVICES, build_app
from tests.service_process import free_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (scripts/setup.sh installs it as root)"),
]


class _Served:
    """An ASGI app on a free loopback port in a background thread (by default without its lifespan: the docs
    need no model and no Redis)."""

    def __init__(self, app, lifespan: str = "off") -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, lifespan=lifespan, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "_Served":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


def rendered_dom(url: str, tmp_path) -> str:
    """The page's DOM after its scripts ran, in headless Chromium with only 127.0.0.1 reachable."""
    command = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
        f"--user-data-dir={tmp_path / 'chromium-profile'}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1",
        "--virtual-time-budget=15000", "--dump-dom", url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


@pytest.fixture(params=SERVICES)
def served(request, tmp_path):
    redis_url = request.getfixturevalue("redis_url") if request.param == "coordinator" else None
    with _Served(build_app(request.param, tmp_path, redis_url)) as server:
        yield server


def test_swagger_ui_and_redoc_render_every_operation_offline(served, tmp_path):
    spec = httpx.get(f"{served.url}/openapi.json").json()
    paths = [path for path in spec["paths"]]
    assert paths

    swagger = rendered_dom(f"{served.url}/docs", tmp_path)
    assert "information-container" in swagger and "opblock" in swagger, "Swagger UI did not render"
    missing = [path for path in paths if f'data-path="{path}"' not in swagger]
    assert not missing, f"operations not rendered by Swagger UI: {missing}"

    redoc = rendered_dom(f"{served.url}/redoc", tmp_path)
    summaries = [op["summary"] for item in spec["paths"].values() for op in item.values()
                 if isinstance(op, dict) and op.get("summary")]
    assert summaries
    missing = [summary for summary in summaries if summary not in redoc]
    assert not missing, f"operations not rendered by ReDoc: {missing}"


def test_a_cdn_backed_docs_page_stays_blank_under_the_same_cut(tmp_path):
    with _Served(FastAPI(title="cdn control")) as server:
        dom = rendered_dom(f"{server.url}/docs", tmp_path)
    assert "cdn.jsdelivr.net" in dom  # FastAPI's stock page points at the CDN...
    assert "opblock" not in dom and "information-container" not in dom  # ...which the cut makes unreachable


def test_a_runs_html_report_shows_its_tables_and_plots_offline(redis_url, tmp_path):
    from services.coordinator.report import PLOTS, build_metrics, write_report
    from shared.schemas.runs import RunInfo

    app = build_app("coordinator", tmp_path / "home", redis_url)
    with _Served(app, lifespan="on") as server:
        created = httpx.post(f"{server.url}/v1/runs", json={"name": "html", "tasks": {
            "n_bc_init": 2, "n_train": 2, "n_rl": 1, "n_eval": 2}})
        assert created.status_code == 201, created.text
        info = RunInfo.model_validate(created.json())
        # The report a finished run writes (no stage workers run here, so it is written from the run's info).
        write_report(Path(info.artifacts), build_metrics(info, [], [], [], {}))
        dom = rendered_dom(f"{server.url}/v1/runs/{info.id}/report.html", tmp_path)
    assert f"SCoRe run {info.id}" in dom and "<table>" in dom
    assert dom.count("<img ") == len(PLOTS)
    assert dom.count('data-loaded="1"') == len(PLOTS), "a plot did not decode in the browser"
