"""`score run`, `score status` and `score export`: runs on a coordinator, through its REST API."""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

from services.cli.client import CLIError, api_request, coordinator_client, load_config, submit
from services.cli.progress import Progress, final_exit, fmt_duration, follow


def run_command(args: argparse.Namespace) -> int:
    path = Path(args.config)
    config, node = load_config(path)
    with coordinator_client() as client:
        info = submit(client, config, node, source=str(path))
        print(info["id"], flush=True)
        if not args.follow:
            return 0
        info = follow(client, info["id"], Progress(tty=False))
    return final_exit(info)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows)]
    lines = ["  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
             for row in [header, ["-" * w for w in widths], *rows]]
    return "\n".join(lines)


def when_text(timestamp) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp)) if timestamp else "-"


def status_command(args: argparse.Namespace) -> int:
    with coordinator_client() as client:
        if args.run_id is None:
            runs = api_request(client, "GET", "/v1/runs").json()["runs"]
            if not runs:
                print("no runs")
                return 0
            print(text_table(["ID", "NAME", "STATE", "STAGE", "CREATED"], [
                [r["id"], r.get("name") or "-", r["state"], r.get("stage") or "-", when_text(r.get("created_at"))]
                for r in runs]))
            return 0
        info = api_request(client, "GET", f"/v1/runs/{args.run_id}").json()
    print(f"run {info['id']}" + (f" ({info['name']})" if info.get("name") else "")
          + f": {info['state']}" + (f", stage {info['stage']}" if info.get("stage") else ""))
    print(f"created {when_text(info.get('created_at'))}, updated {when_text(info.get('updated_at'))}")
    print(f"artifacts: {info.get('artifacts')}")
    if info.get("error"):
        print(f"error: {info['error']}")
    print()
    rows = []
    for name, stage in (info.get("stages") or {}).items():
        rows.append([name, stage["state"], f"{stage.get('done', 0)}/{stage.get('total', 0)}",
                     str(stage.get("failed", 0)),
                     f"{stage['items_per_s']:.2f}" if stage.get("items_per_s") is not None else "-",
                     fmt_duration(stage.get("eta_s")) if stage["state"] == "running" else "-",
                     stage.get("detail") or ""])
    print(text_table(["STAGE", "STATE", "DONE/TOTAL", "FAILED", "ITEMS/S", "ETA", "DETAIL"], rows))
    if info.get("counters"):
        print("\ncounters: " + ", ".join(f"{k} {v}" for k, v in sorted(info["counters"].items())))
    if info.get("eval"):
        print()
        print(text_table(["POLICY", "SUCCESS", "N"], [
            [label, f"{r['success']:.1%}" if isinstance(r.get("success"), (int, float)) else "-", str(r.get("n", "-"))]
            for label, r in info["eval"].items()]))
    return 0


def export_command(args: argparse.Namespace) -> int:
    dataset = args.dataset or ("rl" if args.format == "verl" else "sft")
    extension = "parquet" if args.format == "verl" else "jsonl"
    output = Path(args.output or f"{args.run_id}-{dataset}.{extension}")
    with coordinator_client(timeout=120.0) as client:
        response = api_request(client, "GET", f"/v1/runs/{args.run_id}/datasets/{dataset}",
                            params={"format": args.format})
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(output.name + ".partial")
    partial.write_bytes(response.content)
    partial.replace(output)  # a reader never sees half a file under the final name
    print(f"wrote {output} ({len(response.content)} bytes, {args.format})")
    return 0


def print_results(client, info: dict) -> None:
    run_dir = Path(info["artifacts"])
    metrics = None
    with contextlib.suppress(CLIError, ValueError):
        metrics = api_request(client, "GET", f"/v1/runs/{info['id']}/metrics").json()
    if metrics is None and (run_dir / "metrics.json").is_file():
        metrics = json.loads((run_dir / "metrics.json").read_text())
    print()
    if metrics is not None:
        try:
            from services.coordinator.report import results_table
        except ImportError:
            print(json.dumps(metrics.get("eval", {}), indent=2))
        else:
            print(results_table(metrics))
    elif info.get("eval"):
        print(json.dumps(info["eval"], indent=2))
    print()
    for name in ("report.md", "metrics.json"):
        if (run_dir / name).is_file():
            print(f"{name:<13} {run_dir / name}")
    for plot in sorted((run_dir / "plots").glob("*.png")):
        print(f"{'plot':<13} {plot}")
