"""The checkpoint store: versions, lineage, atomic visibility, name/version references."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from shared.checkpoints import CheckpointStore


def _write_marker(text: str):
    def write(directory):
        (directory / "config.json").write_text("{}")
        (directory / "marker.txt").write_text(text)

    return write


def test_versions_count_up_with_lineage(tmp_path):
    store = CheckpointStore(tmp_path)
    first = store.publish("student-sft", _write_marker("a"), parent="builtin:student", job_id="j1", metrics={"loss": 2.0})
    second = store.publish("student-sft", _write_marker("b"), parent="student-sft/v1", job_id="j2")
    assert (first.version, second.version) == (1, 2)
    assert [r.parent for r in store.versions("student-sft")] == ["builtin:student", "student-sft/v1"]
    assert store.get("student-sft").version == 2
    assert store.get("student-sft", 1).metrics == {"loss": 2.0}
    assert (tmp_path / "student-sft" / "v2" / "marker.txt").read_text() == "b"
    assert store.names() == ["student-sft"]


def test_failed_write_leaves_no_version(tmp_path):
    store = CheckpointStore(tmp_path)

    def broken(directory):
        (directory / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        store.publish("s", broken)
    assert store.versions("s") == []
    assert not (tmp_path / "s" / "v1").exists()
    assert store.publish("s", _write_marker("ok")).version == 1


def test_concurrent_publishers_get_distinct_versions(tmp_path):
    store = CheckpointStore(tmp_path)
    with ThreadPoolExecutor(4) as pool:
        refs = list(pool.map(lambda i: store.publish("s", _write_marker(str(i))), range(8)))
    assert sorted(r.version for r in refs) == list(range(1, 9))
    assert [r.version for r in store.versions("s")] == list(range(1, 9))


def test_resolve_references(tmp_path):
    store = CheckpointStore(tmp_path)
    store.publish("rl", _write_marker("1"))
    store.publish("rl", _write_marker("2"))
    assert store.resolve("rl").version == 2
    assert store.resolve("rl/v1").version == 1
    assert store.resolve("rl@1").version == 1
    assert store.resolve("unknown") is None
    assert store.resolve("/some/path") is None
    with pytest.raises(KeyError, match="no version 7"):
        store.resolve("rl/v7")


def test_bad_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="checkpoint name"):
        CheckpointStore(tmp_path).publish("../escape", _write_marker("x"))


def test_resolve_model_references(tmp_path, score_home):
    from shared.checkpoints import resolve_model

    path, label = resolve_model(None, home=score_home)
    assert label == "builtin:student" and (path / "config.json").is_file()
    assert resolve_model("builtin:teacher", home=score_home)[1] == "builtin:teacher"
    store = CheckpointStore(score_home / "checkpoints")
    ref = store.publish("resolve-test", _write_marker("x"))
    assert resolve_model("resolve-test", home=score_home) == (Path(ref.path), "resolve-test/v1")
    assert resolve_model(str(path), home=score_home)[0] == path
    with pytest.raises(KeyError, match="neither a published checkpoint"):
        resolve_model("no-such-model", home=score_home)
    with pytest.raises(KeyError, match="unknown built-in"):
        resolve_model("builtin:oracle", home=score_home)


def test_an_index_row_is_the_wire_checkpoint_plus_lineage(tmp_path):
    ref = CheckpointStore(tmp_path).publish("student-sft", _write_marker("a"), parent="builtin:student", job_id="j1")
    assert ref.identity().model_dump() == {"name": "student-sft", "version": 1, "path": str(tmp_path / "student-sft" / "v1")}
    assert ref.reference == "student-sft/v1"  # what a job's or session's `base` reads back as this version
