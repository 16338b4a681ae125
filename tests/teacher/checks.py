"""What every correction must satisfy, whatever model wrote it."""

from __future__ import annotations


def assert_valid_correction(correction: dict, item: dict) -> None:
    n_steps = len(item["steps"])
    assert correction["task_id"] == item["task"]["id"]
    assert set(correction["cost"]) >= {"teacher_calls", "teacher_tokens", "full_rollouts"}
    if correction["hard"]:
        assert correction["reason"], correction
        assert correction["first_error_step"] is None and correction["corrected_step"] is None
        return
    if correction["answer_correct"]:
        assert correction["first_error_step"] is None
        return
    k = correction["first_error_step"]
    assert isinstance(k, int) and 0 <= k < n_steps, correction
    step = correction["corrected_step"]
    if k == 0:  # `verify` corrected the plan: a plan replaces a plan
        assert item["steps"][0]["kind"] == "plan" and step["kind"] == "plan" and step["thought"], correction
        return
    assert item["steps"][k]["kind"] == "act", correction
    assert step["kind"] == "act" and step["code"] and step["observation"] is not None, step


def expert_finishes(task, steps, max_turns: int = 8) -> str | None:
    """Replay `steps` in a real sandbox and let the scripted expert continue; its final answer."""
    from shared.agent.execute import execute_step, replay_steps
    from shared.sandbox.sandbox import Sandbox
    from shared.tasks.expert import expert_next_step
    from shared.tasks.gold import builtin_tools

    with Sandbox(tools=builtin_tools()) as sandbox:
        episode, final = replay_steps(steps, sandbox)
        for _ in range(max_turns):
            if final is not None:
                break
            outcome = execute_step(expert_next_step(task, episode), sandbox)
            episode.append(outcome.step)
            final = outcome.final_answer
    return final
