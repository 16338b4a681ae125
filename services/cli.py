"""`score`: the command line of the SCoRe distillation services."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from shared.settings import DEFAULT_PORTS

# Each service package's `app` module provides `app_from_args(args, settings) -> FastAPI`.
SERVICES = ("coordinator", "student", "teacher", "trainer")


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from shared.observability import configure_logging
    from shared.settings import Settings

    settings = Settings()
    configure_logging(settings.log_level, args.service)
    module = importlib.import_module(f"services.{args.service}.app")
    try:
        app = module.app_from_args(args, settings)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    port = args.port or DEFAULT_PORTS[args.service]
    uvicorn.run(app, host=args.host, port=port, log_level=settings.log_level, access_log=False)
    return 0


def _tasks(args: argparse.Namespace) -> int:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="score", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service (what docker compose runs)")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: the service's standard port")
    serve.add_argument("--model", default=None, help="checkpoint directory (default: the built-in tiny model)")
    serve.add_argument("--engine", choices=("transformers", "openai", "expert"), default=None,
                       help="model backend: transformers (in-process, default), openai (remote OpenAI-compatible "
                       "server) or expert (teacher only: the built-in suite's scripted solver)")
    serve.add_argument("--base-url", default=None, help="OpenAI-compatible server for --engine openai")
    serve.add_argument("--served-model-name", default=None)
    serve.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    serve.set_defaults(func=_serve)

    tasks = commands.add_parser("tasks", help="write built-in tasks as task-file JSONL to stdout")
    tasks.add_argument("--suite", default="builtin")
    tasks.add_argument("--family", default=None, help="arith or kb (default: both)")
    tasks.add_argument("--split", choices=("train", "eval"), default="train")
    tasks.add_argument("--n", type=int, default=100)
    tasks.add_argument("--seed", type=int, default=0)
    tasks.add_argument("--trajectories", action="store_true", help="add the expert's gold trajectory to each line")
    tasks.set_defaults(func=_tasks)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
