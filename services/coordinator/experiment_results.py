"""An experiment's results: pure functions of each seed's run metrics (per-task outcomes and arm costs).

`build_results` gives `results.json`: per arm and seed the per-task outcomes, success with its 95% Wilson
interval, teacher tokens, training rows and optimizer steps; and `comparisons`: per seed the paired difference
with an exact McNemar p-value, and pooled over seeds the mean paired difference with a bootstrap 95% CI over
(seed, task) pairs. Everything can be recomputed from the outcomes.
"""

from __future__ import annotations

import json
from pathlib import Path

from shared.fsutil import write_text_atomic
from shared.schemas.run_config import VALIDATION_NOTE, eval_set_name
from shared.stats import discordant, mcnemar_exact, paired_bootstrap, wilson

ARM_ORDER = ("cold_start", "score_sft", "score_rl", "baseline_equal_tokens", "baseline_equal_tasks", "control", "opd",
             "score_opd")
ARM_TITLES = {
    "cold_start": "cold-start student (the shared starting checkpoint)",
    "score_sft": "SCoRe-SFT",
    "score_rl": "SCoRe-SFT then SCoRe-RL",
    "baseline_equal_tokens": "plain distillation at equal teacher tokens",
    "baseline_equal_tasks": "plain distillation at equal tasks",
    "control": "cold-start data only, same optimizer steps as SCoRe",
    "opd": "on-policy distillation from the cold start at SCoRe's teacher tokens",
    "score_opd": "SCoRe-SFT then SCoRe-RL with the teacher's reverse KL (SCoRe + OPD)",
}
# (arm, versus): what each comparison asks.
COMPARISONS = (
    ("score_sft", "cold_start"), ("score_rl", "score_sft"), ("score_rl", "baseline_equal_tokens"),
    ("score_sft", "baseline_equal_tokens"), ("score_rl", "baseline_equal_tasks"), ("score_rl", "control"),
    ("score_sft", "control"), ("score_rl", "opd"), ("opd", "cold_start"), ("score_opd", "score_rl"),
    ("score_opd", "opd"), ("baseline_equal_tasks", "baseline_equal_tokens"),
)


def build_results(experiment_id: str, config: dict, metrics_by_seed: dict[str, dict]) -> dict:
    arms: dict[str, dict] = {}
    for seed, metrics in metrics_by_seed.items():
        for arm, cost in (metrics.get("arms") or {}).items():
            result = (metrics.get("eval") or {}).get(cost["label"]) or {}
            outcomes = {task: int(v) for task, v in (result.get("outcomes") or {}).items()}
            if not outcomes:
                continue
            solved = sum(outcomes.values())
            lo, hi = wilson(solved, len(outcomes))
            arms.setdefault(arm, {"seeds": {}})["seeds"][seed] = {
                "success": solved / len(outcomes), "n": len(outcomes), "solved": solved, "ci95": [lo, hi],
                "outcomes": outcomes, "teacher_tokens": cost["teacher_tokens"],
                "teacher_prompt_tokens": cost["teacher_prompt_tokens"],
                "teacher_written_tokens": cost["teacher_written_tokens"],
                "train_rows": cost["train_rows"], "optimizer_steps": cost["optimizer_steps"],
                "run_id": metrics.get("run_id"),
            }
    for arm in arms.values():
        seeds = arm["seeds"].values()
        solved, n = sum(s["solved"] for s in seeds), sum(s["n"] for s in seeds)
        arm["pooled"] = {"success": solved / n if n else 0.0, "n": n, "solved": solved, "ci95": list(wilson(solved, n)),
                         "teacher_tokens_mean": sum(s["teacher_tokens"] for s in seeds) / len(seeds)}
    return {"id": experiment_id, "config": config, "held_out_tasks": _held_out(arms),
            "arms": {a: arms[a] for a in ARM_ORDER if a in arms}, "comparisons": comparisons(arms)}


def _held_out(arms: dict) -> int:
    ids = {task for arm in arms.values() for seed in arm["seeds"].values() for task in seed["outcomes"]}
    return len(ids)


def comparisons(arms: dict) -> list[dict]:
    out = []
    for arm, versus in COMPARISONS:
        if arm not in arms or versus not in arms:
            continue
        pooled: list[int] = []
        b_total = c_total = 0
        for seed in sorted(set(arms[arm]["seeds"]) & set(arms[versus]["seeds"])):
            a, v = arms[arm]["seeds"][seed]["outcomes"], arms[versus]["seeds"][seed]["outcomes"]
            diffs = [a[t] - v[t] for t in sorted(a.keys() & v.keys())]
            b, c = discordant(a, v)
            b_total, c_total = b_total + b, c_total + c
            pooled += diffs
            out.append({"arm": arm, "versus": versus, "seed": seed, "diff": sum(diffs) / len(diffs) if diffs else 0.0,
                        "ci95": list(paired_bootstrap(diffs, seed=int(seed) if str(seed).isdigit() else 0)),
                        "p": mcnemar_exact(b, c), "test": "exact McNemar", "n": len(diffs),
                        "arm_only": b, "versus_only": c})
        if pooled:
            out.append({"arm": arm, "versus": versus, "seed": "pooled", "diff": sum(pooled) / len(pooled),
                        "ci95": list(paired_bootstrap(pooled)), "p": mcnemar_exact(b_total, c_total),
                        "test": "bootstrap CI over (seed, task) pairs; exact McNemar on pooled discordant pairs",
                        "n": len(pooled), "arm_only": b_total, "versus_only": c_total})
    return out


def summary(results: dict) -> dict:
    return {"arms": {arm: data["pooled"] for arm, data in results["arms"].items()},
            "comparisons": [c for c in results["comparisons"] if c["seed"] == "pooled"]}


# --- text and plots ------------------------------------------------------------------------------------------


def table(results: dict) -> str:
    header = ["arm", "success (pooled)", "95% CI", "per seed", "teacher tokens", "rows", "steps"]
    rows = []
    for arm, data in results["arms"].items():
        seeds = data["seeds"]
        first = next(iter(seeds.values()))
        rows.append([arm, f"{data['pooled']['success']:.1%}",
                     "[{:.1%}, {:.1%}]".format(*data["pooled"]["ci95"]),
                     " ".join(f"{s['success']:.1%}" for s in seeds.values()),
                     f"{data['pooled']['teacher_tokens_mean']:.0f}", str(first["train_rows"]),
                     str(first["optimizer_steps"])])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    comparisons_ = [c for c in results["comparisons"] if c["seed"] == "pooled"]
    if comparisons_:
        lines += ["", "paired differences (pooled over seeds):"]
        lines += [f"  {c['arm']} - {c['versus']}: {c['diff']:+.1%}  95% CI [{c['ci95'][0]:+.1%}, {c['ci95'][1]:+.1%}]"
                  f"  McNemar p={c['p']:.3g}" for c in comparisons_]
    return "\n".join(lines)


def eval_set(results: dict) -> str:
    """`held-out`, or `validation` for an experiment that chose settings on validation tasks."""
    return eval_set_name((((results.get("config") or {}).get("run") or {}).get("tasks") or {}).get("eval_split"))


def render_markdown(results: dict, plots: list[str]) -> str:
    config = results.get("config") or {}
    tasks = eval_set(results)
    out = [f"# Experiment {results['id']}", "",
           f"Seeds: {config.get('seeds')}; {tasks} tasks: {results['held_out_tasks']} (the same for every seed and "
           "arm). Every arm starts from its seed's cold-start checkpoint.", ""]
    if tasks == "validation":
        out += [VALIDATION_NOTE, ""]
    out += ["## Arms", ""]
    out += [f"- `{arm}`: {ARM_TITLES.get(arm, arm)}" for arm in results["arms"]] + [""]
    out += ["| arm | seed | success | 95% Wilson CI | teacher tokens (prompt + written) | train rows | optimizer steps |",
            "|---|---|---|---|---|---|---|"]
    for arm, data in results["arms"].items():
        for seed, s in data["seeds"].items():
            out.append(f"| {arm} | {seed} | {s['success']:.1%} ({s['solved']}/{s['n']}) | "
                       f"[{s['ci95'][0]:.1%}, {s['ci95'][1]:.1%}] | {s['teacher_tokens']} "
                       f"({s['teacher_prompt_tokens']} + {s['teacher_written_tokens']}) | {s['train_rows']} | "
                       f"{s['optimizer_steps']} |")
        p = data["pooled"]
        out.append(f"| **{arm}** | pooled | {p['success']:.1%} ({p['solved']}/{p['n']}) | "
                   f"[{p['ci95'][0]:.1%}, {p['ci95'][1]:.1%}] | mean {p['teacher_tokens_mean']:.0f} | | |")
    out += ["", "Teacher tokens include the shared cold start. Rows and steps are those after cold start (the "
            "cold-start arm: its own).", "", "## Comparisons", "",
            f"Paired over the same {tasks} tasks: per seed the difference in success with an exact McNemar test; "
            "pooled, the mean paired difference with a bootstrap 95% CI over (seed, task) pairs.", "",
            "| arm | versus | seed | difference | 95% CI | p | arm only / versus only |", "|---|---|---|---|---|---|---|"]
    for c in results["comparisons"]:
        out.append(f"| {c['arm']} | {c['versus']} | {c['seed']} | {c['diff']:+.1%} | "
                   f"[{c['ci95'][0]:+.1%}, {c['ci95'][1]:+.1%}] | {c['p']:.3g} | {c['arm_only']} / {c['versus_only']} |")
    out += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots] + [""]
    return "\n".join(out)


def write_results(directory: Path, results: dict) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots_dir = directory / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    names = list(results["arms"])
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, arm in enumerate(names):
        pooled = results["arms"][arm]["pooled"]
        lo, hi = pooled["ci95"]
        ax.bar(i, pooled["success"], color="#8fb3d9")
        ax.errorbar(i, pooled["success"], yerr=[[pooled["success"] - lo], [hi - pooled["success"]]], color="black",
                    capsize=4)
        seeds = [s["success"] for s in results["arms"][arm]["seeds"].values()]
        ax.scatter([i] * len(seeds), seeds, color="#d9534f", s=12, zorder=3)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize="small")
    ax.set_ylabel(f"{eval_set(results)} success")
    ax.set_title(f"{eval_set(results).capitalize()} success by arm (pooled, 95% Wilson CI; dots: seeds)")
    fig.tight_layout()
    fig.savefig(plots_dir / "success_by_arm.png", dpi=100)
    plt.close(fig)

    pooled = [c for c in results["comparisons"] if c["seed"] == "pooled"]
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, c in enumerate(pooled):
        ax.errorbar(c["diff"], i, xerr=[[c["diff"] - c["ci95"][0]], [c["ci95"][1] - c["diff"]]], fmt="o",
                    color="black", capsize=4)
    ax.axvline(0.0, color="grey", linewidth=1)
    ax.set_yticks(range(len(pooled)), [f"{c['arm']} - {c['versus']}" for c in pooled], fontsize="small")
    ax.set_xlabel(f"paired difference in {eval_set(results)} success (bootstrap 95% CI)")
    ax.set_title("Paired differences, pooled over seeds")
    fig.tight_layout()
    fig.savefig(plots_dir / "paired_differences.png", dpi=100)
    plt.close(fig)

    plots = ["plots/success_by_arm.png", "plots/paired_differences.png"]
    write_text_atomic(directory / "results.json", json.dumps(results, indent=2))
    write_text_atomic(directory / "report.md", render_markdown(results, plots))
