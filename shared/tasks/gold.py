"""Gold trajectories: the expert's steps executed in the sandbox, so observations are the real ones."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from shared.agent.execute import replay_steps
from shared.sandbox.sandbox import Sandbox
from shared.schemas.agent import Episode, Task
from shared.tasks.builtin import builtin_search_backend
from shared.tasks.expert import expert_steps
from shared.tools.search import agent_tools


def builtin_tools() -> dict:
    return agent_tools(builtin_search_backend())


def gold_episode(task: Task, tools: dict | None = None) -> Episode:
    """Run the expert's trajectory for a built-in task in a fresh sandbox."""
    with Sandbox(tools=tools if tools is not None else builtin_tools()) as sandbox:
        steps, final_answer = replay_steps(expert_steps(task), sandbox)
    return Episode(
        task_id=task.id, steps=steps, final_answer=final_answer, finished=final_answer is not None,
        stop_reason="final_answer" if final_answer is not None else "max_turns",
    )


def gold_episodes(tasks: list[Task], *, workers: int = 4) -> list[Episode]:
    """Gold episodes in task order; sandboxes run in a few threads (each is its own process)."""
    tools = builtin_tools()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda task: gold_episode(task, tools), tasks))
