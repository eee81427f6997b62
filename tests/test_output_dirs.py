"""Owned output folders (`onereason.io`): replaced only when marked or empty, never an input or a file."""

from __future__ import annotations

import pytest

from onereason.io import MARKER, OutputDirError, atomic_dir, check_output_dir, is_owned, make_output_dir


def test_atomic_dir_marks_what_it_writes_and_replaces_only_that(tmp_path):
    out = tmp_path / "out"
    with atomic_dir(out) as tmp:
        (tmp / "a.txt").write_text("1")
    assert is_owned(out) and (out / "a.txt").read_text() == "1"
    with atomic_dir(out) as tmp:  # ours: replaced as a whole
        (tmp / "b.txt").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folders left


def test_atomic_dir_never_replaces_a_users_folder_or_file(tmp_path):
    mine, paper = tmp_path / "mine", tmp_path / "paper.pdf"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    paper.write_bytes(b"%PDF")
    for target in (mine, paper):
        with pytest.raises(OutputDirError), atomic_dir(target) as tmp:
            (tmp / "x").write_text("never")
    assert (mine / "thesis.tex").read_text() == "x" and paper.read_bytes() == b"%PDF"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "paper.pdf"]  # nothing moved aside


def test_a_users_dot_old_folder_survives_a_replacement(tmp_path):
    out = tmp_path / "out"
    precious = tmp_path / ".out.old"
    precious.mkdir()
    (precious / "keep.txt").write_text("keep")
    for _ in range(2):
        with atomic_dir(out) as tmp:
            (tmp / "a").write_text("a")
    assert (precious / "keep.txt").read_text() == "keep"


def test_overwrite_permits_a_users_folder_but_never_an_input(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "old.txt").write_text("old")
    with pytest.raises(OutputDirError, match="--overwrite"):
        check_output_dir(mine)
    check_output_dir(mine, overwrite=True)
    with atomic_dir(mine) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in mine.iterdir()) == [MARKER, "new.txt"]
    data = tmp_path / "data"
    (data / "splits").mkdir(parents=True)
    for out, words in (
        (data, "is the input"),
        (data / "splits" / "x", "inside the input"),
        (tmp_path, "holds"),
    ):
        with pytest.raises(OutputDirError, match=words):
            check_output_dir(out, inputs=[data], overwrite=True)
    check_output_dir(tmp_path / "elsewhere", inputs=[data])  # a new folder beside the input is fine


def test_writers_into_a_folder_mark_only_what_they_may_use(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert is_owned(make_output_dir(empty, replaces=False))
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("x")
    with pytest.raises(OutputDirError):
        make_output_dir(used, replaces=False)
    assert not is_owned(used)
