"""Live progress of a run on the terminal, from its event stream."""

from __future__ import annotations

import shutil
import sys
import time

from services.cli.client import api_request, sse_events


def fmt_duration(seconds) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(float(seconds)))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"


class Progress:
    """Shows run events: one refreshing status line on a terminal, plain log lines otherwise."""

    PLAIN_PROGRESS_EVERY_S = 10.0

    def __init__(self, out=None, tty: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.tty = self.out.isatty() if tty is None else tty
        self.stage: str | None = None
        self.status: dict[str, str] = {}
        self.reward: str | None = None
        self._last_plain: dict[str, float] = {}
        self._line_shown = False

    def _width(self) -> int:
        return max(40, shutil.get_terminal_size((100, 20)).columns - 1)

    def _clear(self) -> None:
        if self._line_shown:
            self.out.write("\r\x1b[2K")
            self._line_shown = False

    def _print(self, text: str) -> None:
        self._clear()
        self.out.write(text + "\n")
        self.out.flush()

    def _redraw(self) -> None:
        if not self.tty or self.stage is None:
            return
        line = f"[{self.stage}] {self.status.get(self.stage, '')}"
        if self.reward and self.stage == "rl":
            line += f" | RL reward {self.reward}"
        self.out.write("\r\x1b[2K" + line[: self._width()])
        self.out.flush()
        self._line_shown = True

    def event(self, event: dict) -> None:
        kind, stage, data = event.get("type"), event.get("stage"), event.get("data") or {}
        stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time") or time.time()))
        message = event.get("message", "")
        if stage:
            self.stage = stage
        if kind == "progress":
            if "step" in data and "done" not in data:  # a trainer job's SFT step
                text = message
            else:
                text = (f"{data.get('done', 0) + data.get('failed', 0)}/{data.get('total', '?')}"
                        + (f", {data['items_per_s']:.2f} items/s" if data.get("items_per_s") else "")
                        + (f", ETA {fmt_duration(data.get('eta_s'))}" if data.get("eta_s") is not None else "")
                        + (f", {data['failed']} failed" if data.get("failed") else ""))
            if stage:
                self.status[stage] = text
            if self.tty:
                self._redraw()
            else:
                now = time.monotonic()
                finished = data.get("total") and data.get("done", 0) + data.get("failed", 0) >= data["total"]
                if finished or now - self._last_plain.get(stage or "", 0.0) >= self.PLAIN_PROGRESS_EVERY_S:
                    self._last_plain[stage or ""] = now
                    self._print(f"{stamp} {stage or '-'}: {text}")
            return
        if kind == "rl_step" and data.get("reward_mean") is not None:
            self.reward = f"{data['reward_mean']:.3f}"
            if stage:
                self.status[stage] = message.split(":")[0]
        elif kind == "stage" and stage and stage not in self.status:
            self.status[stage] = "starting"
        self._print(f"{stamp} {message}")
        self._redraw()

    def close(self) -> None:
        self._clear()
        self.out.flush()


def follow(client, run_id: str, progress: Progress | None = None) -> dict:
    progress = progress or Progress()
    try:
        for event in sse_events(client, run_id):
            progress.event(event)
    finally:
        progress.close()
    return api_request(client, "GET", f"/v1/runs/{run_id}").json()


def final_exit(info: dict) -> int:
    if info["state"] == "succeeded":
        print(f"run {info['id']} succeeded")
        return 0
    print(f"run {info['id']} {info['state']}" + (f": {info['error']}" if info.get("error") else ""), file=sys.stderr)
    return 1
