"""The one writer (`rbgp.files`): atomic, usual file modes, paths checked with clear errors."""

from __future__ import annotations

import os
import stat

import pytest

from rbgp.files import (
    atomic_write,
    check_output_dir,
    check_output_file,
    remove_stale_temps,
    save_figure,
    write_text,
)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_modes_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig = plt.figure()
        save_figure(fig, tmp_path / "p.png")
        plt.close(fig)
    finally:
        os.umask(old)
    assert _mode(tmp_path / "a.txt") == 0o644 and _mode(tmp_path / "p.png") == 0o644  # not mkstemp's 0600
    assert (tmp_path / "p.png").read_bytes().startswith(b"\x89PNG")


def test_output_paths_are_checked(tmp_path):
    a_file = tmp_path / "f"
    a_file.write_text("x")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    with pytest.raises(ValueError, match="is an existing file"):
        check_output_dir(a_file, "--out-dir")
    with pytest.raises(ValueError, match="which is a file"):
        check_output_dir(a_file / "sub", "--out-dir")
    with pytest.raises(ValueError, match=r"--plot '.*' is a folder"):
        check_output_file(tmp_path, "--plot")
    with pytest.raises(ValueError, match="is a file, so nothing can be written under it"):
        check_output_file(a_file / "x.png", "--plot")
    with pytest.raises(ValueError, match="is a folder"):
        with atomic_write(tmp_path):
            pass
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ValueError, match="no permission"):
            check_output_file(locked / "x.png")


def test_stale_temps_are_removed(tmp_path):
    for name in (".checkpoint.pt.ab12cd34.tmp", ".metrics.csv.zz_9.tmp", ".other.txt.ab12cd34.tmp", "mine.tmp"):
        (tmp_path / name).write_text("partial")
    removed = remove_stale_temps(tmp_path, ("checkpoint.pt", "metrics.csv"))
    assert sorted(p.name for p in removed) == [".checkpoint.pt.ab12cd34.tmp", ".metrics.csv.zz_9.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.txt.ab12cd34.tmp", "mine.tmp"]


def test_folder_lock_keeps_a_second_writer_out(tmp_path):
    import os
    import subprocess
    import sys

    from rbgp.files import LOCK_NAME, FolderBusy, folder_lock

    with folder_lock(tmp_path / "new"):
        assert (tmp_path / "new").is_dir()
    assert not (tmp_path / "new").exists()  # made for the lock and left empty: removed again
    run = tmp_path / "run"
    run.mkdir()
    with folder_lock(run) as lock:
        assert lock == run / LOCK_NAME and lock.read_text().split()[0] == str(os.getpid())
        with pytest.raises(FolderBusy, match=f"in use by process {os.getpid()}"):
            with folder_lock(run):
                pass
    assert not (run / LOCK_NAME).exists()  # released
    # a lock left by a process that is gone (kill -9) is taken over, with a message
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / LOCK_NAME).write_text(f"{dead.stdout.strip()} {os.uname().nodename}\n")
    said = []
    with folder_lock(run, said.append):
        pass
    assert said and "no longer runs" in said[0] and not (run / LOCK_NAME).exists()
    # another host's lock is never taken over
    (run / LOCK_NAME).write_text("1 some-other-host\n")
    with pytest.raises(FolderBusy, match="on some-other-host"):
        with folder_lock(run):
            pass
