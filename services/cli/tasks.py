"""`score tasks`: built-in tasks as task-file JSONL on stdout, optionally with their gold trajectories."""

from __future__ import annotations

import argparse
import json
import sys


def tasks_command(args: argparse.Namespace) -> int:
    from shared.tasks.builtin import FAMILIES, builtin_tasks

    if args.suite != "builtin":
        print(f"error: unknown suite {args.suite!r}; available: builtin", file=sys.stderr)
        return 2
    if args.family is not None and args.family not in FAMILIES:
        print(f"error: unknown family {args.family!r}; available: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    tasks = builtin_tasks(family=args.family, split=args.split, n=args.n, seed=args.seed)
    episodes = None
    if args.trajectories:
        from shared.tasks.gold import gold_episodes

        episodes = gold_episodes(tasks)
    out = sys.stdout
    for index, task in enumerate(tasks):
        row = task.model_dump(mode="json")
        if episodes is not None:
            row["trajectory"] = episodes[index].model_dump(
                mode="json", include={"steps", "final_answer", "finished"}, exclude_none=False
            )
        out.write(json.dumps(row) + "\n")
    return 0
