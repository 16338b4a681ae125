"""A finished run's metrics, report and plots: pure functions of the run's records, RL steps and timings.

`build_metrics` gathers everything `metrics.json` holds; `write_report` writes it with `report.md` and the PNG plots
under `plots/`; `results_table` is the held-out results table as plain text for a terminal.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from services.coordinator.datasets import selection_salt, sft_records
from services.coordinator.arm_costs import arms, teacher_cost
from services.coordinator.records import gives_rl_prefix
from shared.fsutil import atomic_write
from shared.schemas.run_config import VALIDATION_NOTE
from shared.schemas.runs import DeadLetter, RunInfo
from shared.schemas.trajectories import TrajectoryRecord
from shared.stats import wilson

# Evaluated policies in the order the report shows them: the three SCoRe stages, then the references.
EVAL_LABELS = ("bc_init", "sft", "rl", "baseline", "baseline_tokens", "control", "opd", "score_opd", "teacher")
STUDENT_LABELS = ("bc_init", "sft", "rl")
LABEL_TITLES = {
    "bc_init": "student after cold start (bc_init)",
    "sft": "student after SCoRe-SFT (sft)",
    "rl": "student after SCoRe-RL (rl)",
    "baseline": "plain-distillation baseline (baseline)",
    "baseline_tokens": "plain distillation at SCoRe's teacher tokens (baseline_tokens)",
    "control": "cold-start data only, SCoRe's optimizer steps (control)",
    "opd": "on-policy distillation from the cold start (opd)",
    "score_opd": "SCoRe-RL plus on-policy distillation (score_opd)",
    "teacher": "teacher (teacher)",
}
REWARD_KINDS = ("correct", "wrong_final", "equivalent", "repeat", "other", "no_answer")
MPS_OUTCOMES = ("self_solved", "repaired", "hard", "unsolved")
PLOTS = ("success_by_stage.png", "rl_reward.png", "correction_steps.png", "repairs_per_attempt.png",
         "key_step_rewards.png", "opd.png")


# --- metrics -----------------------------------------------------------------------------------


def _histogram(values: list[int], at_least: int = 0) -> dict[str, int]:
    """Counts keyed by the value as a string, every value from 0 to the largest present (JSON keys are strings)."""
    counts = Counter(values)
    top = max([at_least, *values]) if values or at_least else -1
    return {str(k): counts.get(k, 0) for k in range(top + 1)}


def _sft_rows(info: RunInfo, records: list[TrajectoryRecord]) -> int:
    if "sft_rows" in info.counters:
        return int(info.counters["sft_rows"])
    # The SFT stage's own selection (repaired plus a hashed share of self-solved), without the replayed cold start.
    correct = [r for r in records if r.stage == "mps" and r.correct]
    return len(sft_records(correct, info.config.mps.self_solved_share, selection_salt(info.config)))


def build_metrics(info: RunInfo, records: list[TrajectoryRecord], rl_steps: list[dict],
                  dead_letters: list[DeadLetter], timing: dict, arm_steps: dict[str, list[dict]] | None = None) -> dict:
    """Everything `metrics.json` holds.

    `arm_steps`: the step results of the chained reference arms (`opd`, `score_opd`), by stage.
    `mps` counts the train pool only (the tasks SCoRe-SFT draws from); its correction-step histogram covers every
    teacher repair that located an error, RL pool included. `teacher_tokens` sums each stage's records.
    """
    every_step = [*rl_steps, *(step for steps in (arm_steps or {}).values() for step in steps)]
    mps_all = [r for r in records if r.stage == "mps"]
    train = [r for r in mps_all if r.pool == "train"]
    outcomes = Counter(r.outcome for r in train)
    correction_steps = [rep.first_error_step for r in mps_all for rep in r.repairs
                        if not rep.hard and rep.first_error_step is not None]
    key_step = dict.fromkeys(REWARD_KINDS, 0)
    for step in rl_steps:
        for kind, count in (step.get("rewards") or {}).items():
            key_step[kind] = key_step.get(kind, 0) + int(count)
    if "rl_prefixes" in info.counters:
        prefixes = int(info.counters["rl_prefixes"])
    else:
        prefixes = sum(1 for r in mps_all if gives_rl_prefix(r))
    bc_init_correct = sum(1 for r in records if r.stage == "bc_init" and r.correct)
    baseline_correct = sum(1 for r in records if r.stage == "baseline" and r.correct)

    wall_s = timing.get("wall_s")
    if info.state.terminal:
        finished_at = info.updated_at
    elif wall_s is not None:
        # The report stage runs before the run turns terminal: the run ends as the report is written.
        finished_at = info.created_at + float(wall_s)
    else:
        finished_at = None
    if wall_s is None and finished_at is not None:
        wall_s = finished_at - info.created_at

    return {
        "run_id": info.id,
        "name": info.name,
        "state": str(info.state.value),
        "created_at": info.created_at,
        "finished_at": finished_at,
        "wall_s": wall_s,
        "eval_set": info.config.tasks.eval_set,
        "eval": {label: dict(result) for label, result in info.eval.items()},
        "mps": {
            "tasks": len(train),
            **{outcome: outcomes.get(outcome, 0) for outcome in MPS_OUTCOMES},
            "repairs_per_attempt": _histogram([len(r.repairs) for r in train], at_least=3),
            "correction_step_histogram": _histogram(correction_steps),
            "teacher_tokens": sum(r.teacher_tokens for r in train),
            "student_tokens": sum(r.student_tokens for r in train),
        },
        "rl": {"prefixes": prefixes, "steps": list(rl_steps)},
        **{stage: {"steps": list(steps)} for stage, steps in (arm_steps or {}).items()},
        "key_step_rewards": key_step,
        "teacher_tokens": {stage: sum(r.teacher_tokens for r in records if r.stage == stage)
                           for stage in ("bc_init", "mps", "baseline")},
        "teacher_cost": teacher_cost(records, every_step, info.eval),
        "arms": arms(info, records, every_step),
        "datasets": {"bc_init": bc_init_correct, "sft": _sft_rows(info, records),
                     "baseline": bc_init_correct + baseline_correct},
        "timing": timing,
        "dead_letters": [dl.model_dump(mode="json") for dl in dead_letters],
    }


# --- text --------------------------------------------------------------------------------------


def _labels(metrics: dict) -> list[str]:
    present = metrics.get("eval") or {}
    return [label for label in EVAL_LABELS if label in present] + sorted(set(present) - set(EVAL_LABELS))


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _rows(metrics: dict) -> list[list[str]]:
    rows = []
    for label in _labels(metrics):
        result = metrics["eval"][label]
        solved, n = result.get("solved"), result.get("n")
        interval = "-"
        if solved is not None and n:
            lo, hi = wilson(int(solved), int(n))
            interval = f"[{lo:.1%}, {hi:.1%}]"
        rows.append([label, _fmt(result.get("success"), ".1%"), interval,
                     f"{_fmt(solved, 'd')}/{_fmt(n, 'd')}" if solved is not None or n is not None else "-",
                     _fmt(result.get("answered"), ".1%"), _fmt(result.get("mean_turns"), ".2f"),
                     _fmt(result.get("mean_tokens"), ".1f")])
    return rows


def eval_set(metrics: dict) -> str:
    """`held-out`, or `validation` for a run that evaluated validation tasks (older metrics: held-out)."""
    return metrics.get("eval_set") or "held-out"


def table_header(metrics: dict) -> list[str]:
    return ["policy", f"{eval_set(metrics)} success", "95% CI (Wilson)", "solved/n", "answered", "mean turns", "mean tokens"]


def results_table(metrics: dict) -> str:
    """The evaluation results as an aligned plain-text table (one row per evaluated policy)."""
    rows = _rows(metrics)
    if not rows:
        return f"no {eval_set(metrics)} evaluations recorded"
    header = table_header(metrics)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(row) + " |" for row in rows)]


def _teacher_cost_section(cost: dict) -> list[str]:
    rows = [[purpose, part["stage"], str(part["calls"]), str(part["prompt_tokens"]), str(part["written_tokens"])]
            for purpose, part in (cost.get("by_purpose") or {}).items()]
    if not rows:
        return ["No teacher tokens were recorded.", ""]
    out = ["## Teacher cost", "",
           "Every teacher call by purpose: prompt tokens read and tokens written. The scripted expert reports what "
           "a model teacher would have spent for the same steps, counted in the teacher's tokenizer.", ""]
    out += _markdown_table(["purpose", "stage", "calls", "prompt tokens", "written tokens"], rows) + [""]
    for name, title in (("score", "SCoRe (cold start, corrections, rollouts, judgements)"),
                        ("baseline", "plain distillation (cold start and baseline trajectories)")):
        part = cost.get(name) or {}
        out += [f"- {title}: {part.get('prompt_tokens', 0)} prompt + {part.get('written_tokens', 0)} written tokens "
                f"in {part.get('calls', 0)} calls."]
    return out + [""]


def render_markdown(metrics: dict, plots: list[str]) -> str:
    """`report.md`: what was measured, in tables; `plots` are paths relative to the run directory."""
    title = metrics.get("run_id", "run")
    if metrics.get("name"):
        title = f"{title} ({metrics['name']})"
    out = [f"# SCoRe run {title}", "",
           f"State: {metrics.get('state')}. Wall time: {_fmt(metrics.get('wall_s'), '.1f')} s.", ""]

    tasks = eval_set(metrics)
    out += [f"## {tasks.capitalize()} results", ""]
    rows = _rows(metrics)
    if rows:
        if tasks == "validation":
            out += [VALIDATION_NOTE, ""]
        out += [f"Each policy was evaluated on the same {tasks} tasks. The interval is the 95% Wilson score interval "
                "of the success rate over those tasks (one seed: it shows sampling noise over tasks, not over "
                "training runs). `answered` is the share of episodes that gave a final answer; turns and tokens "
                "are means per episode.", ""]
        out += _markdown_table(table_header(metrics), rows) + [""]
        out += [f"- `{label}`: {LABEL_TITLES.get(label, label)}" for label in _labels(metrics)] + [""]
    else:
        out += [f"No {tasks} evaluations were recorded.", ""]

    mps = metrics.get("mps") or {}
    out += ["## Mentored problem solving (train pool)", ""]
    out += _markdown_table(["tasks", *MPS_OUTCOMES], [[str(mps.get(k, 0)) for k in ("tasks", *MPS_OUTCOMES)]]) + [""]
    repairs = mps.get("repairs_per_attempt") or {}
    out += ["Tasks by number of teacher repairs: " + (", ".join(f"{k}: {v}" for k, v in repairs.items()) or "none")
            + ".", ""]
    out += [f"Student tokens (train pool): {mps.get('student_tokens', 0)}. "
            f"Teacher tokens (train pool): {mps.get('teacher_tokens', 0)}.", ""]
    teacher = metrics.get("teacher_tokens") or {}
    out += ["Teacher tokens by stage: " + ", ".join(f"{k}: {v}" for k, v in teacher.items()) + ".", ""]
    out += _teacher_cost_section(metrics.get("teacher_cost") or {})
    datasets = metrics.get("datasets") or {}
    out += ["Training rows: " + ", ".join(f"{k}: {v}" for k, v in datasets.items()) + ".", ""]

    rl = metrics.get("rl") or {}
    steps = [s for s in rl.get("steps") or [] if s.get("reward_mean") is not None]
    out += ["## SCoRe-RL", "", f"Verified prefixes: {rl.get('prefixes', 0)}. "
            f"Steps recorded: {len(rl.get('steps') or [])}.", ""]
    if steps:
        first, last = steps[0], steps[-1]
        out += [f"Mean reward: step {first['step']}: {first['reward_mean']:.3f}; "
                f"step {last['step']}: {last['reward_mean']:.3f}.", ""]
    else:
        out += ["No RL step rewards were recorded.", ""]
    key = metrics.get("key_step_rewards") or {}
    if any(key.values()):
        out += ["Sampled continuations by key-step reward kind, summed over all RL steps:", ""]
        out += _markdown_table(list(key), [[str(v) for v in key.values()]]) + [""]

    if curve := opd_curve(metrics):
        out += ["## On-policy distillation", "", f"The OPD arm measured every few steps on its first {curve[0]['n']} "
                f"{tasks} tasks: greedy success, and the reverse KL to the teacher per generated token on episodes "
                "the student sampled there (temperature 1).", ""]
        out += _markdown_table(["policy updates", "success", "95% CI", "reverse KL (nats/token)", "tokens"], [
            [str(p["updates"]), f"{p['success']:.1%}", "[{:.1%}, {:.1%}]".format(*wilson(p["solved"], p["n"])),
             f"{p['reverse_kl']:.4f}", str(p["tokens"])] for p in curve]) + [""]

    timing = metrics.get("timing") or {}
    out += ["## Timing", ""]
    stages = timing.get("stages") or {}
    if stages:
        out += _markdown_table(["stage", "seconds"], [[k, _fmt(v, ".1f")] for k, v in stages.items()]) + [""]
    out += [f"Coordinator overhead: {_fmt(timing.get('coordinator_overhead_s'), '.2f')} s "
            f"(share of wall time: {_fmt(timing.get('overhead_share'), '.2%')}).", ""]

    dead = metrics.get("dead_letters") or []
    if dead:
        out += ["## Dead letters", ""]
        out += _markdown_table(["stage", "item", "attempts", "error"],
                               [[d.get("stage", ""), d.get("item_key", ""), str(d.get("attempts", "")),
                                 str(d.get("error", "")).replace("|", "\\|").replace("\n", " ")] for d in dead]) + [""]

    if plots:
        out += ["## Plots", ""]
        out += [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(out)


# --- plots -------------------------------------------------------------------------------------


def _figure():
    # A bare Figure on an Agg canvas: no pyplot global state, so threads and a headless server are safe.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _no_data(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", fontsize=16, transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def _plot_success(ax, metrics: dict) -> None:
    results = metrics.get("eval") or {}
    students = [label for label in STUDENT_LABELS if results.get(label, {}).get("success") is not None]
    refs = [label for label in ("baseline", "baseline_tokens", "control", "opd", "score_opd", "teacher")
            if results.get(label, {}).get("success") is not None]
    title = f"{eval_set(metrics).capitalize()} success by stage"
    if not students and not refs:
        _no_data(ax, title)
        return
    values = [results[label]["success"] for label in students]
    if students:
        bars = ax.bar(students, values, color="tab:blue", label="student (SCoRe)")
        ax.plot(students, values, color="tab:blue", marker="o")
        for bar, value in zip(bars, values):
            ax.annotate(f"{value:.1%}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                        xytext=(0, 3), textcoords="offset points")
    for label, color, style in (("baseline", "tab:orange", "--"), ("baseline_tokens", "tab:red", "--"),
                                ("control", "tab:gray", "-."), ("opd", "tab:purple", "-."),
                                ("score_opd", "tab:cyan", "-."),
                                ("teacher", "tab:green", ":")):
        if label in refs:
            value = results[label]["success"]
            ax.axhline(value, color=color, linestyle=style, label=f"{label}: {value:.1%}")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(f"{eval_set(metrics)} success")
    ax.set_title(title)
    ax.legend(loc="best")


def _plot_rl_reward(ax, metrics: dict) -> None:
    steps = [s for s in (metrics.get("rl") or {}).get("steps") or [] if s.get("reward_mean") is not None]
    if not steps:
        _no_data(ax, "Mean reward per RL step")
        return
    from matplotlib.ticker import MaxNLocator

    ax.plot([s["step"] for s in steps], [s["reward_mean"] for s in steps], marker="o")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("RL step")
    ax.set_ylabel("mean reward")
    ax.set_title("Mean reward per RL step")


def _plot_histogram(ax, counts: dict, title: str, xlabel: str) -> None:
    if not counts or not any(counts.values()):
        _no_data(ax, title)
        return
    keys = sorted(counts, key=int)
    ax.bar([int(k) for k in keys], [counts[k] for k in keys], color="tab:purple")
    ax.set_xticks([int(k) for k in keys])
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title)


def _plot_key_steps(ax, metrics: dict) -> None:
    steps = [s for s in (metrics.get("rl") or {}).get("steps") or [] if s.get("rewards")]
    title = "Key-step reward kinds per RL step"
    if not steps:
        _no_data(ax, title)
        return
    x = [s["step"] for s in steps]
    bottom = [0] * len(steps)
    for kind in REWARD_KINDS:
        counts = [int(s["rewards"].get(kind, 0)) for s in steps]
        ax.bar(x, counts, bottom=bottom, label=kind)
        bottom = [b + c for b, c in zip(bottom, counts)]
    ax.set_xticks(x)
    ax.set_xlabel("RL step")
    ax.set_ylabel("samples")
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small")


def opd_curve(metrics: dict) -> list[dict]:
    """The OPD arm's measurements in order: policy updates done so far, evaluation success and reverse KL."""
    points = []
    for step in (metrics.get("opd") or {}).get("steps") or []:
        for when, offset in (("before", 0), ("after", 1)):
            if point := (step.get("eval") or {}).get(when):
                points.append({"updates": step["step"] + offset, **point})
    return points


def _plot_opd(ax, metrics: dict) -> None:
    title = "On-policy distillation: reverse KL to the teacher"
    trained = {arm: [s for s in (metrics.get(arm) or {}).get("steps") or [] if "teacher_kl" in (s.get("metrics") or {})]
               for arm in ("opd", "score_opd")}
    curve = opd_curve(metrics)
    if not any(trained.values()) and not curve:
        _no_data(ax, title)
        return
    for arm, color in (("opd", "tab:purple"), ("score_opd", "tab:cyan")):
        if trained[arm]:
            ax.plot([s["step"] + 1 for s in trained[arm]], [s["metrics"]["teacher_kl"] for s in trained[arm]],
                    color=color, alpha=0.6, label=f"{arm}: training batches")
    if curve:
        ax.plot([p["updates"] for p in curve], [p["reverse_kl"] for p in curve], color="black", marker="o",
                label=f"opd: {eval_set(metrics)} episodes")
        success = ax.twinx()
        bounds = [wilson(p["solved"], p["n"]) for p in curve]  # 95% Wilson interval of each success rate
        success.errorbar([p["updates"] for p in curve], [p["success"] for p in curve], capsize=3,
                         yerr=[[p["success"] - lo for p, (lo, _) in zip(curve, bounds)],
                               [hi - p["success"] for p, (_, hi) in zip(curve, bounds)]], color="tab:green",
                         marker="s", linestyle="--", label=f"opd: {eval_set(metrics)} success (95% CI)")
        success.set_ylim(0, 1.05)
        success.set_ylabel(f"{eval_set(metrics)} success (greedy)")
        success.legend(loc="upper right", fontsize="small")
    ax.set_xlabel("policy updates")
    ax.set_ylabel("reverse KL, nats per generated token")
    ax.set_title(title)
    ax.legend(loc="upper left", fontsize="small")


def _save_plot(path: Path, draw, metrics: dict) -> Path:
    fig, ax = _figure()
    draw(ax, metrics)
    fig.tight_layout()
    return atomic_write(path, lambda handle: fig.savefig(handle, format="png"))


def write_plots(plot_dir: Path, metrics: dict) -> list[Path]:
    mps = metrics.get("mps") or {}
    drawers = {
        "success_by_stage.png": _plot_success,
        "rl_reward.png": _plot_rl_reward,
        "correction_steps.png": lambda ax, m: _plot_histogram(
            ax, mps.get("correction_step_histogram") or {}, "Teacher corrections by first error step",
            "first_error_step (0-based step index)"),
        "repairs_per_attempt.png": lambda ax, m: _plot_histogram(
            ax, mps.get("repairs_per_attempt") or {}, "Train-pool tasks by number of teacher repairs", "repairs"),
        "key_step_rewards.png": _plot_key_steps,
        "opd.png": _plot_opd,
    }
    return [_save_plot(plot_dir / name, drawers[name], metrics) for name in PLOTS]


def write_report(run_dir: Path, metrics: dict) -> list[Path]:
    """Write `metrics.json`, `plots/*.png` and `report.md` under `run_dir`, each atomically; returns their paths."""
    run_dir = Path(run_dir)
    metrics_path = atomic_write(run_dir / "metrics.json", lambda handle: handle.write(
        json.dumps(metrics, indent=2, default=str).encode()))
    plots = write_plots(run_dir / "plots", metrics)
    markdown = render_markdown(metrics, [p.relative_to(run_dir).as_posix() for p in plots])
    report_path = atomic_write(run_dir / "report.md", lambda handle: handle.write(markdown.encode()))
    return [metrics_path, report_path, *plots]
