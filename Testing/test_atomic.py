"""Atomic outputs: complete files under their final names with the usual permissions, or nothing."""
import os

import pytest

from DiffusionRegistrationLib.io.atomic import OutputSet, atomic_path


def test_a_written_file_gets_the_permissions_of_a_normal_file(tmp_path):
    umask = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.txt") as temporary:
            temporary.write_text("done")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.txt").read_text() == "done"
    assert os.stat(tmp_path / "a.txt").st_mode & 0o777 == 0o666 & ~umask


def test_a_failure_inside_the_block_leaves_neither_the_file_nor_the_temporary(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.txt") as temporary:
            temporary.write_text("half")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


def test_an_output_set_appears_whole_or_not_at_all(tmp_path):
    with pytest.raises(RuntimeError):
        with OutputSet() as outputs:
            outputs.path(tmp_path / "one.txt").write_text("1")
            raise RuntimeError("the second output failed")
    assert list(tmp_path.iterdir()) == []
    with OutputSet() as outputs:
        outputs.path(tmp_path / "one.txt").write_text("1")
        outputs.path(tmp_path / "two.txt").write_text("2")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.txt", "two.txt"]
