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
    assert isinstance(k, int) and 0 < k < n_steps and item["steps"][k]["kind"] == "act", correction
    step = correction["corrected_step"]
    assert step["kind"] == "act" and step["code"] and step["observation"] is not None, step
