"""The box process helper itself (templates/boxproc.py): names, the command line, and the watchdog's stop protocol.

Its behaviour behind both transports (launch, exit codes, zombies, stop) is in test_remote_transport.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from gpurun.job import watchdog as wc
from gpurun.remote.transport import BOXPROC_PATH, boxproc
from tests.support.processes import process_alive, wait_for

PY = sys.executable


def helper(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PY, "-I", str(BOXPROC_PATH), *args], cwd=cwd, capture_output=True, text=True, timeout=30)


def test_the_helper_owns_the_file_names() -> None:
    bp = boxproc()
    assert bp.exit_path("runner.pid") == "runner.exit"
    assert bp.exit_path("/x/a.pid.pid") == "/x/a.pid.exit"
    assert bp.exit_path("lock") == "lock.exit"


def test_the_watchdog_and_the_client_share_one_helper() -> None:
    assert wc.template().boxproc is boxproc()


@pytest.mark.parametrize(
    ("text", "pid"),
    [("4242\n", 4242), ("4242 trailing", 4242), ("1", None), ("0", None), ("-7", None), ("x", None), ("", None)],
)
def test_a_pid_file_never_names_init_a_group_or_this_process(tmp_path: Path, text: str, pid: int | None) -> None:
    path = tmp_path / "r.pid"
    path.write_text(text)
    assert boxproc().read_pid(str(path)) == pid
    path.write_text(str(os.getpid()))
    assert boxproc().read_pid(str(path)) is None
    assert boxproc().read_pid(str(tmp_path / "missing.pid")) is None


def test_the_command_line_with_relative_paths_and_appended_output(tmp_path: Path) -> None:
    (tmp_path / "work").mkdir()
    first = helper("launch", "--pid-file", "run/r.pid", "--stdout", "run/out", "--cwd", "work", "--append", "--",
                   "sh", "-c", "pwd; exit 4", cwd=tmp_path)  # fmt: skip
    answer = json.loads(first.stdout)
    assert first.returncode == 0 and answer == {"started": int((tmp_path / "run" / "r.pid").read_text())}
    assert wait_for(lambda: (tmp_path / "run" / "r.exit").exists())
    assert (tmp_path / "run" / "r.exit").read_text() == "4\n"
    helper("launch", "--pid-file", "run/r.pid", "--stdout", "run/out", "--append", "--", "echo", "more", cwd=tmp_path)
    assert wait_for(lambda: (tmp_path / "run" / "r.exit").exists())
    assert (tmp_path / "run" / "out").read_text() == f"{tmp_path / 'work'}\nmore\n"  # appended, each in its cwd
    assert helper("running", "run/r.pid", cwd=tmp_path).returncode == 1
    assert helper("stop", "run/r.pid", cwd=tmp_path).stdout == "gone\n"
    missing = helper("launch", "--pid-file", "run/r.pid", "--stdout", "run/out", cwd=tmp_path)
    assert missing.returncode == 2 and "the command goes after --" in missing.stderr


def test_an_exit_code_on_record_means_it_no_longer_runs(tmp_path: Path) -> None:
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        (tmp_path / "r.pid").write_text(str(sleeper.pid))
        assert boxproc().running(str(tmp_path / "r.pid"))
        (tmp_path / "r.exit").write_text("0\n")  # the monitor says it ended; a reused pid proves nothing
        assert not boxproc().running(str(tmp_path / "r.pid"))
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_checkpoint_protocol_terms_the_leader_alone_then_sweeps_its_group(tmp_path: Path) -> None:
    """The watchdog's stop: SIGTERM to the runner only (its data-loader workers must outlive its checkpoint), then
    SIGKILL to what is left of its group."""
    child_file = tmp_path / "child"
    runner = (
        "import signal, subprocess, sys, time\n"
        "child = subprocess.Popen(['sleep', '300'])\n"
        f"open({str(child_file)!r}, 'w').write(str(child.pid))\n"
        "def on_term(*_):\n"
        f"    open({str(tmp_path / 'child_alive_at_term')!r}, 'w').write(str(child.poll() is None))\n"
        "    sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, on_term)\n"
        "time.sleep(300)\n"
    )
    leader = subprocess.Popen([PY, "-c", runner], start_new_session=True)
    heard: list[tuple[str, dict[str, Any]]] = []
    try:
        assert wait_for(lambda: child_file.exists() and child_file.read_text().isdigit())
        child = int(child_file.read_text())
        code = boxproc().terminate(leader.pid, 5.0, leader_first=True, notify=lambda w, **f: heard.append((w, f)))
        assert code == 143 and leader.wait(timeout=5) == 0
        assert (tmp_path / "child_alive_at_term").read_text() == "True"
        assert wait_for(lambda: not process_alive(child), timeout=5)
        assert heard == [
            ("sigterm", {"pid": leader.pid, "grace_s": 5.0}),
            ("sigkill", {"pid": leader.pid, "group": True}),
        ]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


def test_a_process_outside_its_own_group_is_signalled_alone() -> None:
    """A pid that leads no group of its own (it shares ours): only that process, never the group, is signalled."""
    sleeper = subprocess.Popen(["sleep", "60"])
    heard: list[tuple[str, dict[str, Any]]] = []
    try:
        code = boxproc().terminate(sleeper.pid, 5.0, notify=lambda w, **f: heard.append((w, f)))
        assert code == 143 and sleeper.wait(timeout=5) == -signal.SIGTERM
        assert heard == [("sigterm", {"pid": sleeper.pid, "grace_s": 5.0})]
        assert boxproc().terminate(sleeper.pid, 1.0) is None  # gone (reaped): nothing to do
    finally:
        sleeper.kill()
        sleeper.wait()
