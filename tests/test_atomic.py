"""Atomic outputs: a reader never sees a half-written file or a missing folder, and an
output that cannot be written is told before any work."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from steelflow.atomic import atomic_dir, atomic_path
from tests.conftest import TEST_CONFIG, models_args, on_mount


def test_a_replaced_folder_is_always_there_complete(tmp_path):
    """While a folder of 200 files is replaced again and again, a reader polling it
    always finds a complete folder: the old one or the new one, never none."""
    target = tmp_path / "out"
    with atomic_dir(target, "test") as tmp:
        (tmp / "complete").write_text("0")
    seen, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            seen.append((target / "complete").is_file())

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for version in range(1, 30):
            with atomic_dir(target, "test") as tmp:
                for i in range(200):
                    (tmp / f"part{i}").write_text("x" * 100)
                (tmp / "complete").write_text(str(version))
    finally:
        stop.set()
        thread.join()
    assert len(seen) > 100 and all(seen), f"{seen.count(False)} of {len(seen)} reads found none"
    assert (target / "complete").read_text() == "29"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind


def test_a_failure_leaves_the_old_folder_and_no_temporary(tmp_path):
    target = tmp_path / "out"
    with atomic_dir(target, "test") as tmp:
        (tmp / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target, "test") as tmp:
        (tmp / "a").write_text("new")
        raise RuntimeError("stage failed")
    assert (target / "a").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "f.txt"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError
    assert not target.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("command", ["submit", "fetch", "config"])
def test_an_output_on_a_read_only_mount_is_one_line_before_any_work(
    mounts, project, tmp_path, command
):
    folder = tmp_path / "input"
    folder.mkdir()
    out = {
        "submit": folder / "submission.csv",
        "fetch": folder / "raw",
        "config": folder / "new/c.yaml",
    }
    inputs = {"submit": [*models_args(project), "--raw", str(project / "raw")], "fetch": []}
    args = [
        command,
        "--config",
        str(TEST_CONFIG),
        *inputs.get(command, []),
        "--out",
        str(out[command]),
    ]
    done = on_mount("read-only", folder, sys.executable, "-m", "steelflow", *args)
    assert done.returncode == 1, done.stderr
    assert done.stderr.splitlines() == [
        f"steelflow {command}: error: --out {out[command]}: cannot write in {folder} "
        "(read-only or not permitted); choose a writable place for the output"
    ]
    assert done.stdout.splitlines()[-1] == "left: "


def test_what_a_killed_run_left_is_removed_and_a_running_one_s_kept(tmp_path, caplog):
    killed = subprocess.Popen(["true"])
    killed.wait()
    running = subprocess.Popen(["sleep", "60"])
    try:
        for pid in (killed.pid, running.pid):
            (tmp_path / f".raw.{pid}.tmp").mkdir()
            (tmp_path / f".raw.{pid}.tmp" / "train.csv").write_text("half")
        (tmp_path / f".submission.csv.{killed.pid}.tmp").write_text("half")
        with atomic_dir(tmp_path / "raw", "fetch") as tmp:
            (tmp / "train.csv").write_text("whole")
        left = {f".raw.{running.pid}.tmp", f".submission.csv.{killed.pid}.tmp", "raw"}
        assert {p.name for p in tmp_path.iterdir()} == left
        with atomic_path(tmp_path / "submission.csv") as tmp:
            tmp.write_text("whole")
        assert {p.name for p in tmp_path.iterdir()} == {
            f".raw.{running.pid}.tmp",
            "raw",
            "submission.csv",
        }
    finally:
        running.kill()
    said = [
        r.getMessage() for r in caplog.records if "left by a run that was killed" in r.getMessage()
    ]
    assert len(said) == 2 and all(str(killed.pid) in message for message in said)
