"""`score`: the command line of the SCoRe distillation services.

One module per concern: `serve` (one service in this process), `tasks` (task files), `client` and `progress` (the
coordinator's REST API and a run's live progress), `runs` (run, status, export), `stack` (up and demo on loopback),
`experiment` (seeds and arms of a comparison). Heavy imports stay inside the commands, so `score --help` is quick.
"""

from __future__ import annotations

import argparse
import os
import sys

from services.cli.client import CLIError
from services.cli.experiment import experiment_command
from services.cli.runs import export_command, run_command, status_command
from services.cli.serve import SERVICES, serve_command
from services.cli.stack import demo_command, up_command
from services.cli.teachers import HELP as TEACHER_HELP, TEACHERS
from services.cli.tasks import tasks_command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="score", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run one service (what docker compose runs)")
    serve.add_argument("service", choices=SERVICES)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=None, help="default: the service's standard port")
    serve.add_argument("--model", default=None, help="model reference: builtin:<role>, a published series name "
                       "(its latest version), name/vN, or a checkpoint directory (default: the built-in tiny model)")
    serve.add_argument("--engine", choices=("transformers", "openai", "expert"), default=None,
                       help="model backend: transformers (in-process, default), openai (remote OpenAI-compatible "
                       "server) or expert (teacher only: the built-in suite's scripted solver)")
    serve.add_argument("--base-url", default=None, help="OpenAI-compatible server for --engine openai")
    serve.add_argument("--served-model-name", default=None)
    serve.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    serve.set_defaults(func=serve_command)

    tasks = commands.add_parser("tasks", help="write built-in tasks as task-file JSONL to stdout")
    tasks.add_argument("--suite", default="builtin")
    tasks.add_argument("--family", default=None, help="arith or kb (default: both)")
    tasks.add_argument("--split", choices=("train", "eval"), default="train")
    tasks.add_argument("--n", type=int, default=100)
    tasks.add_argument("--seed", type=int, default=0)
    tasks.add_argument("--trajectories", action="store_true", help="add the expert's gold trajectory to each line")
    tasks.set_defaults(func=tasks_command)

    up = commands.add_parser("up", help="start Redis (unless SCORE_REDIS_URL is set) and the four services; "
                             "Ctrl-C stops them all")
    # The scripted solver by default, as in `score demo` and the compose file: the built-in tiny teacher model
    # does not solve the suite yet (docs/models.md), so runs on it would wait at cold start for hours.
    up.add_argument("--teacher-engine", choices=("expert", "transformers"), default="expert",
                    help="teacher backend: the scripted solver (expert, the default) or the built-in tiny model "
                    "(transformers; it does not solve the built-in suite yet)")
    up.add_argument("--home", default=None, help="data directory (default: SCORE_HOME)")
    up.set_defaults(func=up_command)

    demo = commands.add_parser("demo", help="start everything on loopback and run the whole SCoRe pipeline on "
                               "the built-in suite with tiny models")
    demo.add_argument("--quick", action="store_true", help="a smaller run (configs/demo-quick.yaml)")
    demo.add_argument("--teacher", choices=TEACHERS, default=None, help=TEACHER_HELP)
    demo.add_argument("--home", default=None, help="data directory (default: SCORE_HOME)")
    demo.add_argument("--no-baseline", action="store_true", help="skip the plain-distillation baseline")
    demo.set_defaults(func=demo_command)

    run = commands.add_parser("run", help="submit a run config (YAML or JSON) to the coordinator")
    run.add_argument("config", help="run config file (.yaml, .yml or .json)")
    run.add_argument("--follow", action="store_true", help="print the run's events until it ends")
    run.set_defaults(func=run_command)

    experiment = commands.add_parser("experiment", help="compare SCoRe with plain distillation and a control: "
                                     "several seeds, one held-out set (starts the services on loopback)")
    experiment.add_argument("config", help="experiment config (.yaml or .json; configs/experiment.yaml)")
    experiment.add_argument("--quick", action="store_true", help="a small version for CI (2 seeds, small pools)")
    experiment.add_argument("--teacher", choices=TEACHERS, default=None, help=TEACHER_HELP)
    experiment.add_argument("--home", default=None, help="data directory (default: SCORE_HOME)")
    experiment.set_defaults(func=experiment_command)

    status = commands.add_parser("status", help="list runs, or show one run's progress")
    status.add_argument("run_id", nargs="?", default=None)
    status.set_defaults(func=status_command)

    export = commands.add_parser("export", help="download a run's dataset")
    export.add_argument("run_id")
    export.add_argument("--format", choices=("messages", "sharegpt", "verl"), default="messages")
    export.add_argument("--dataset", choices=("sft", "bc_init", "baseline", "rl"), default=None,
                        help="default: sft (rl for --format verl)")
    export.add_argument("-o", "--output", default=None, help="default: <run>-<dataset>.<ext> in the current directory")
    export.set_defaults(func=export_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except BrokenPipeError:  # `score status | head`: the reader left; nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
