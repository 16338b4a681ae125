import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared.models import builtin
from shared.models.builtin import MANIFEST, builtin_model_dir, ensure_builtin_model
from shared.models.loading import load_causal_lm
from shared.models.tokenizer import CHATML_TEMPLATE


def manifest(directory: Path) -> dict:
    return json.loads((directory / MANIFEST).read_text())


def vocab(directory: Path) -> dict:
    return json.loads((directory / "tokenizer.json").read_text())["model"]["vocab"]


def test_layout_is_a_hugging_face_checkpoint(student_model_dir, score_home):
    assert student_model_dir == score_home / "models" / "builtin" / "student"
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json"):
        assert (student_model_dir / name).is_file(), name
    info = manifest(student_model_dir)
    assert (info["role"], info["size"]) == ("student", "nano")
    assert info["params"] > 0 and len(info["recipe_hash"]) == 64


def test_second_call_reuses_without_rebuilding(student_model_dir, score_home):
    before = manifest(student_model_dir)["build_id"], (student_model_dir / "model.safetensors").stat().st_mtime_ns
    assert ensure_builtin_model("student", score_home) == student_model_dir
    after = manifest(student_model_dir)["build_id"], (student_model_dir / "model.safetensors").stat().st_mtime_ns
    assert before == after


def test_home_defaults_to_settings(score_home, student_model_dir):
    assert builtin_model_dir("student") == student_model_dir  # SCORE_HOME is set by the fixture


def test_unknown_role_is_rejected(score_home):
    with pytest.raises(ValueError, match="student, teacher"):
        ensure_builtin_model("critic", score_home)


def test_loads_offline_with_template_and_left_padding(student_model_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, tokenizer = load_causal_lm(student_model_dir)
    assert not model.training and model.dtype == torch.float32
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert tokenizer.padding_side == "left"
    assert tokenizer.eos_token_id == model.config.eos_token_id == model.generation_config.eos_token_id
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    out = model.generate(**prompt, max_new_tokens=3, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_student_and_teacher_share_one_vocabulary(score_home):
    student, teacher = (builtin_model_dir(role, score_home) for role in ("student", "teacher"))
    shared_tokenizer = score_home / "models" / "builtin" / "tokenizer"
    assert vocab(student) == vocab(teacher) == vocab(shared_tokenizer)
    assert manifest(student)["tokenizer_hash"] == manifest(teacher)["tokenizer_hash"]
    assert manifest(teacher)["size"] == "micro" and manifest(teacher)["params"] > manifest(student)["params"]


# Build mechanics are tested on the teacher: it has no pre-training stage, so a build takes seconds.
def test_tampered_recipe_hash_rebuilds_only_the_model(tmp_path):
    model_dir = ensure_builtin_model("teacher", tmp_path)
    tokenizer_dir = model_dir.parent / "tokenizer"
    first, tokenizer_build = manifest(model_dir), manifest(tokenizer_dir)["build_id"]
    (model_dir / MANIFEST).write_text(json.dumps({**first, "recipe_hash": "tampered"}))

    assert ensure_builtin_model("teacher", tmp_path) == model_dir
    rebuilt = manifest(model_dir)
    assert rebuilt["build_id"] != first["build_id"]
    assert rebuilt["recipe_hash"] == first["recipe_hash"]
    assert manifest(tokenizer_dir)["build_id"] == tokenizer_build  # still current, kept
    assert not list(model_dir.parent.glob(".*"))  # no temp or stale dirs left beside it


def test_failed_build_leaves_nothing_visible(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(builtin, "build_tiny_model", broken)
    with pytest.raises(RuntimeError, match="boom"):
        ensure_builtin_model("teacher", tmp_path)
    root = tmp_path / "models" / "builtin"
    assert not (root / "teacher").exists()
    assert not list(root.glob(".*"))


CHILD = """
import json, logging, sys
from pathlib import Path
logging.basicConfig(level=logging.INFO, stream=sys.stderr)
from shared.models.builtin import ensure_builtin_model
path = ensure_builtin_model("teacher", Path(sys.argv[1]))
print(json.loads((path / "builtin.json").read_text())["build_id"])
"""


def test_concurrent_processes_share_one_build(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env)
        for _ in range(2)
    ]
    results = [child.communicate(timeout=240) + (child.returncode,) for child in children]
    for out, err, code in results:
        assert code == 0, err[-2000:]
    assert len({out.strip() for out, _, _ in results}) == 1  # both see the same build
    logs = "".join(err for _, err, _ in results)
    assert logs.count("built teacher model") == 1
    assert logs.count("built tokenizer") == 1
    assert not list((tmp_path / "models" / "builtin").glob(".*"))


def test_load_errors_name_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing-dir"):
        load_causal_lm(tmp_path / "missing-dir")
    with pytest.raises(ValueError, match=f"{tmp_path.name}.*config.json"):
        load_causal_lm(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ValueError, match="no weights"):
        load_causal_lm(tmp_path)


def test_corpus_cap_keeps_every_part_of_the_corpus():
    texts = [f"{i:03d}" + "x" * 7 for i in range(100)]  # 1000 chars
    kept = builtin._cap_chars(texts, 250)
    assert sum(map(len, kept)) <= 250
    assert kept[0] == texts[0] and int(kept[-1][:3]) > 90  # spread over the whole list, not a prefix
    assert builtin._cap_chars(texts, 10_000) == texts


def test_the_wide_student_is_built_on_demand_and_wider_than_the_student_but_not_the_teacher():
    from shared.models.tiny import ROLE_SIZES, TINY_SIZES

    assert "student-wide" in builtin.ON_DEMAND_ROLES and "student-wide" not in builtin.ROLES  # setup and CI skip it
    wide, student = (builtin._model_recipe(role, "tok") for role in ("student-wide", "student"))
    assert wide["shape"]["hidden_size"] > student["shape"]["hidden_size"]
    assert wide["induction"]["steps"] > 0 and "sft" not in wide  # learning the suite is the cold start's job
    # The model teacher must stay at least as large as the student it teaches.
    params = {size: TINY_SIZES[size]["hidden_size"] * TINY_SIZES[size]["intermediate_size"]
              * TINY_SIZES[size]["num_hidden_layers"] for size in TINY_SIZES}
    assert params[ROLE_SIZES["teacher-sft"]] >= params[ROLE_SIZES["student-wide"]]
