"""Atomic writes: the target holds the old content or the new one, never a part."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from plumbing.atomic import publish, replacing, replacing_dir, write_bytes, write_text


def test_write_replaces_the_whole_file_and_leaves_nothing_beside_it(tmp_path: Path) -> None:
    p = tmp_path / "state.json"
    write_text(p, "old")
    write_bytes(p, b"new")
    assert p.read_bytes() == b"new" and sorted(tmp_path.iterdir()) == [p]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path: Path) -> None:
    p = tmp_path / "a.bin"
    write_bytes(p, b"old")
    with pytest.raises(RuntimeError), replacing(p) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert p.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [p]


def test_a_library_that_appends_its_suffix_writes_the_path_it_was_given(tmp_path: Path) -> None:
    p = tmp_path / "shard.npz"
    with replacing(p) as tmp:
        np.savez(tmp, x=np.arange(3))  # numpy adds .npz unless the name ends with it
    assert np.load(p)["x"].tolist() == [0, 1, 2] and sorted(tmp_path.iterdir()) == [p]


def test_a_directory_appears_whole_and_replaces_only_when_asked(tmp_path: Path) -> None:
    d = tmp_path / "bundle"
    with replacing_dir(d) as tmp:
        (tmp / "a").write_text("1")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "b").write_text("2")
    with pytest.raises(OSError), replacing_dir(d) as tmp:  # never over a finished one
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in d.iterdir()) == ["a", "sub"]
    with replacing_dir(d, replace=True) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(p.name for p in d.iterdir()) == ["c"]
    with pytest.raises(OSError), replacing_dir(d, replace=True) as tmp:
        (tmp / "d").write_text("4")
        raise OSError("disk full")
    assert sorted(p.name for p in d.iterdir()) == ["c"] and sorted(tmp_path.iterdir()) == [d]


def test_publish_renames_a_complete_file_over_the_target(tmp_path: Path) -> None:
    part, final = tmp_path / "x.part", tmp_path / "x"
    final.write_text("old")
    part.write_text("new")
    publish(part, final)
    assert final.read_text() == "new" and not part.exists()
