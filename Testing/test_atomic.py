"""Atomic outputs: complete files under their final names with the usual permissions, or nothing."""
import json
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


def _ended_pid() -> int:
    """The pid of a process that has ended."""
    import subprocess
    import sys

    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)


def _journal(folder, token: str, pid: int, moves: list) -> None:
    (folder / f".diffreg-{token}.journal").write_text(json.dumps({
        "diffreg": "journal", "token": token, "pid": pid, "state": "prepared", "moves": moves, "aside": [],
        "journal": str(folder / f".diffreg-{token}.journal"), "temporaries": [str(folder / f".diffreg-{token}.stage")]}))


def test_recovery_refuses_a_journal_that_names_a_file_outside_its_own_folders(tmp_path):
    from DiffusionRegistrationLib.errors import RegistrationError
    from DiffusionRegistrationLib.io.atomic import recover

    victim = tmp_path / "elsewhere" / "precious.txt"
    victim.parent.mkdir()
    victim.write_text("keep")
    token = "0123456789abcdef"
    _journal(tmp_path, token, _ended_pid(), [[str(tmp_path / f".diffreg-{token}.stage" / "precious.txt"), str(victim)]])
    with pytest.raises(RegistrationError, match=f".diffreg-{token}.journal: the journal of an interrupted commit"):
        recover(tmp_path)
    assert victim.read_text() == "keep"


def test_recovery_leaves_the_commit_of_a_running_process_alone_and_rolls_back_a_stopped_one(tmp_path):
    from DiffusionRegistrationLib.io.atomic import recover

    token = "00000000000000aa"
    stage = tmp_path / f".diffreg-{token}.stage"
    stage.mkdir()
    (stage / ".diffreg-temporary").write_text(json.dumps({"diffreg": "temporary", "token": token, "pid": os.getpid(),
                                                          "journal": str(tmp_path / f".diffreg-{token}.journal")}))
    (tmp_path / "new.txt").write_text("moved in before the kill")
    _journal(tmp_path, token, os.getpid(), [[str(stage / "new.txt"), str(tmp_path / "new.txt")]])
    assert recover(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([stage.name, f".diffreg-{token}.journal", "new.txt"])
    _journal(tmp_path, token, _ended_pid(), [[str(stage / "new.txt"), str(tmp_path / "new.txt")]])
    assert recover(tmp_path) == [tmp_path / f".diffreg-{token}.journal"]
    assert list(tmp_path.iterdir()) == []
