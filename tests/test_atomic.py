"""Atomic writers: all or nothing, and the permissions a plain write would have given."""

import os
import stat

import pytest

from vqdiffusion.utils.atomic import atomic_directory, atomic_file, atomic_write_bytes, atomic_write_json


@pytest.fixture
def umask():
    """Set the process umask for a test, restoring the previous one after it."""
    previous = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(previous)


@pytest.mark.parametrize("mask, file_mode, folder_mode", [(0o022, 0o644, 0o755), (0o027, 0o640, 0o750)],
                         ids=["umask-022", "umask-027"])
def test_written_files_and_folders_follow_the_umask(tmp_path, umask, mask, file_mode, folder_mode):
    umask(mask)
    atomic_write_bytes(tmp_path / "a.bin", b"abc")
    with atomic_directory(tmp_path / "run") as staging:
        (staging / "weights.bin").write_bytes(b"w")
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == file_mode
    assert stat.S_IMODE((tmp_path / "run").stat().st_mode) == folder_mode
    assert (tmp_path / "a.bin").read_bytes() == b"abc" and (tmp_path / "run" / "weights.bin").read_bytes() == b"w"


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "metrics.json"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half of the new")
        raise RuntimeError("killed")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "kept.txt").write_text("kept")
    with pytest.raises(RuntimeError), atomic_directory(tmp_path / "run") as staging:
        (staging / "new.txt").write_text("new")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["kept.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json", "run"]


def test_a_finished_folder_replaces_the_old_one_whole(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "stale.txt").write_text("stale")
    with atomic_directory(tmp_path / "run") as staging:
        (staging / "fresh.txt").write_text("fresh")
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["fresh.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["run"]


def test_json_is_written_indented_with_a_final_newline_and_the_given_dumps_options(tmp_path):
    atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [2]}, sort_keys=True)
    assert (tmp_path / "a.json").read_text() == '{\n  "a": [\n    2\n  ],\n  "b": 1\n}\n'
    atomic_write_json(tmp_path / "a.json", {"x": 0.5j}, default=str)
    assert (tmp_path / "a.json").read_text() == '{\n  "x": "0.5j"\n}\n'
