"""One behaviour, two transports: every test here runs over SSH to the real sshd and on this machine."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpurun.errors import SshError
from gpurun.remote.local_transport import LocalTransport
from gpurun.remote.session import SshSession
from gpurun.remote.transport import CommandError, StartFailed, Transport, exit_path_for
from tests.support.processes import process_alive, wait_for
from tests.support.remote_helpers import transport_fixture  # noqa: F401  (the fixture)

PY = sys.executable


async def test_run_returns_exit_code_output_and_unbuffered_env(transport: Transport, tmp_path: Path) -> None:
    rc, out, err = await transport.run("echo out; echo err >&2; echo $PYTHONUNBUFFERED", check=False)
    assert (rc, out, err) == (0, "out\n1\n", "err\n")
    tricky = 'it\'s "quoted" $HOME `x` ;|&'
    result = await transport.run('printf %s "$VALUE"; pwd', env={"VALUE": tricky}, cwd=str(tmp_path))
    value, cwd = result.stdout.split("\n", 1)[0][: len(tricky)], result.stdout[len(tricky) :].strip()
    assert value == tricky
    assert Path(cwd).resolve() == tmp_path.resolve()


async def test_failed_command_raises_with_exit_code_and_stderr_tail(transport: Transport) -> None:
    with pytest.raises(CommandError) as caught:
        await transport.run("echo working; echo 'disk full: /workspace' >&2; exit 7")
    error = caught.value
    assert isinstance(error, SshError)
    assert error.rc == 7
    assert "exited with 7" in error.message and "disk full: /workspace" in error.message
    assert error.where == transport.where
    rc, _, _ = await transport.run("exit 7", check=False)
    assert rc == 7


async def test_timeout_is_a_command_error(transport: Transport) -> None:
    with pytest.raises(CommandError, match="timed out") as caught:
        await transport.run("sleep 30", timeout=0.5)
    assert caught.value.rc == 124


async def test_stream_lines_delivers_each_line_while_the_command_still_runs(
    transport: Transport, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    # the command cannot finish until the test has seen its first line and opened the gate
    cmd = f"echo first; while [ ! -e {gate} ]; do sleep 0.05; done; echo second; echo; echo third"
    lines = []
    async for line in transport.stream_lines(cmd):
        lines.append(line)
        if line == "first":
            gate.touch()
    assert lines == ["first", "second", "", "third"]


async def test_stream_lines_raises_on_failure_after_yielding_output(transport: Transport) -> None:
    seen = []
    with pytest.raises(CommandError, match="broken pipe dream") as caught:
        async for line in transport.stream_lines("echo partial; echo 'broken pipe dream' >&2; exit 3"):
            seen.append(line)
    assert seen == ["partial"] and caught.value.rc == 3


async def test_python_output_streams_unbuffered(transport: Transport, tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    script = f"import os, time\nprint('ready')\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)\nprint('end')"
    lines = []
    async for line in transport.stream_lines(f"{PY} -c {shlex.quote(script)}"):
        lines.append(line)
        gate.touch()
    assert lines == ["ready", "end"]


async def test_detached_process_survives_the_connection_and_records_its_exit(
    transport: Transport, tmp_path: Path
) -> None:
    gate, log, pid_path = tmp_path / "go", tmp_path / "logs" / "runner.log", str(tmp_path / "runner.pid")
    script = (
        f"import os, time\nprint('started')\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.05)\n"
        "print('finished')"
    )
    pid = await transport.start_detached([PY, "-c", script], pid_path, stdout=str(log), env={"GPURUN_X": "1"})
    assert pid > 1 and await transport.is_running(pid_path)
    assert wait_for(lambda: log.exists() and "started" in log.read_text())
    if isinstance(transport, SshSession):
        transport.connection.abort()  # the SSH connection dies abruptly...
        await transport.reconnect()
    assert await transport.is_running(pid_path)  # ...the process does not
    gate.touch()
    assert wait_for(lambda: "finished" in log.read_text())
    for _ in range(200):
        if not await transport.is_running(pid_path):
            break
        await asyncio.sleep(0.05)
    assert not await transport.is_running(pid_path)
    assert await transport.exit_code(pid_path) == 0
    assert log.read_text() == "started\nfinished\n"


async def test_detached_exit_code_of_a_failing_command(transport: Transport, tmp_path: Path) -> None:
    pid_path = str(tmp_path / "bad.pid")
    await transport.start_detached(["sh", "-c", "echo oops >&2; exit 5"], pid_path, stdout=str(tmp_path / "bad.log"))
    for _ in range(200):
        if await transport.exit_code(pid_path) is not None:
            break
        await asyncio.sleep(0.05)
    assert await transport.exit_code(pid_path) == 5
    assert not await transport.is_running(pid_path)
    assert (tmp_path / "bad.log").read_text() == "oops\n"


async def test_kill_stops_the_whole_process_group(transport: Transport, tmp_path: Path) -> None:
    pid_path, children = str(tmp_path / "k.pid"), tmp_path / "children"
    # a runner with a child process (like a dataloader worker) that ignores nothing
    cmd = f"sleep 300 & echo $! > {children}; sleep 300"
    await transport.start_detached(["sh", "-c", cmd], pid_path, stdout=str(tmp_path / "k.log"))
    assert wait_for(lambda: children.exists() and children.read_text().strip().isdigit())
    child = int(children.read_text())
    assert process_alive(child)
    assert await transport.kill(pid_path, grace_s=5) is True
    assert not await transport.is_running(pid_path)
    assert wait_for(lambda: not process_alive(child), timeout=5)
    assert await transport.exit_code(pid_path) == 143
    assert await transport.kill(pid_path) is False  # already gone


# ---- the box process helper (templates/boxproc.py) behind both transports -------------------------------------


async def _exit_code_soon(transport: Transport, pid_path: str) -> int | None:
    for _ in range(200):
        if (code := await transport.exit_code(pid_path)) is not None:
            return code
        await asyncio.sleep(0.05)
    return None


async def test_launch_writes_the_pid_then_the_exit_code_and_leads_its_own_group(
    transport: Transport, tmp_path: Path
) -> None:
    gate, run = tmp_path / "gate", tmp_path / "run"
    script = "import os, sys, time\nprint(os.getcwd(), os.environ['GPURUN_X'])\nprint('to stderr', file=sys.stderr)\n"
    script += f"while not os.path.exists({str(gate)!r}): time.sleep(0.05)\nsys.exit(3)"
    pid_path = str(run / "runner.pid")
    (tmp_path / "work").mkdir()
    pid = await transport.start_detached(
        [PY, "-c", script], pid_path, stdout=str(run / "out.log"), stderr=str(run / "err.log"), append=False,
        env={"GPURUN_X": "it's here"}, cwd=str(tmp_path / "work"),
    )  # fmt: skip
    assert Path(pid_path).read_text().strip() == str(pid)
    assert os.getpgid(pid) == pid and os.getsid(pid) == pid  # leads its own session and process group
    assert await transport.is_running(pid_path) and await transport.exit_code(pid_path) is None
    assert wait_for(lambda: (run / "err.log").read_text() == "to stderr\n")
    assert (run / "out.log").read_text() == f"{tmp_path / 'work'} it's here\n"
    gate.touch()
    assert await _exit_code_soon(transport, pid_path) == 3
    assert Path(exit_path_for(pid_path)) == run / "runner.exit"
    assert not await transport.is_running(pid_path)
    # a second launch with the same files starts afresh: pid and exit files replaced, output truncated
    await transport.start_detached(["sh", "-c", "echo again"], pid_path, stdout=str(run / "out.log"), append=False)
    assert await _exit_code_soon(transport, pid_path) == 0
    assert (run / "out.log").read_text() == "again\n"


async def test_a_command_that_cannot_start_is_start_failed_with_the_shells_words(
    transport: Transport, tmp_path: Path
) -> None:
    pid_path = str(tmp_path / "r.pid")
    missing = str(tmp_path / "no-such-python")
    with pytest.raises(StartFailed) as caught:
        await transport.start_detached([missing, "-V"], pid_path, stdout=str(tmp_path / "r.log"))
    assert caught.value.rc == 127 and "not found" in caught.value.message
    assert await transport.exit_code(pid_path) == 127  # recorded like any exit, for the watchdog and the follower
    assert not Path(pid_path).exists() and not await transport.is_running(pid_path)
    assert (tmp_path / "r.log").read_text() == f"{missing}: not found\n"


async def test_a_group_counts_as_running_until_only_zombies_are_left(transport: Transport, tmp_path: Path) -> None:
    """A pid file written by anyone: the leader exits (a zombie nobody reaps yet) but its child lives on in the
    group, so it runs; once the child is gone too, the zombie alone does not count."""
    pid_path, child_file = str(tmp_path / "g.pid"), tmp_path / "child"
    leader = subprocess.Popen(["sh", "-c", f"sleep 300 & echo $! > {child_file}; exit 0"], start_new_session=True)
    try:
        Path(pid_path).write_text(f"{leader.pid}\n")
        assert wait_for(lambda: child_file.exists() and child_file.read_text().strip().isdigit())
        assert wait_for(lambda: not process_alive(leader.pid))  # a zombie: this test has not reaped it
        assert await transport.is_running(pid_path)
        os.kill(int(child_file.read_text()), signal.SIGKILL)
        assert wait_for(lambda: not process_alive(int(child_file.read_text())))
        assert not await transport.is_running(pid_path)
        assert Path(f"/proc/{leader.pid}").exists()  # still there, as a zombie
        assert await transport.kill(pid_path, grace_s=1) is False  # nothing to stop: nothing touched
        assert await transport.exit_code(pid_path) is None
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(leader.pid, signal.SIGKILL)
        leader.wait()


async def test_stop_escalates_to_sigkill_after_the_grace_and_records_137(transport: Transport, tmp_path: Path) -> None:
    pid_path = str(tmp_path / "stubborn.pid")
    # SIGTERM ignored by the shell and, inherited, by its child
    await transport.start_detached(["sh", "-c", "trap '' TERM; sleep 300 & wait"], pid_path, stdout=str(tmp_path / "s"))
    started = time.monotonic()
    assert await transport.kill(pid_path, grace_s=1.0) is True
    assert time.monotonic() - started >= 1.0
    assert not await transport.is_running(pid_path)
    assert await transport.exit_code(pid_path) == 137
    assert await transport.kill(pid_path, grace_s=1.0) is False  # a second stop on a gone group: a no-op
    assert await transport.exit_code(pid_path) == 137


async def test_stop_records_an_exit_code_when_no_monitor_does(transport: Transport, tmp_path: Path) -> None:
    """A group started without the helper (or whose monitor died): the stop itself records 143."""
    pid_path = str(tmp_path / "bare.pid")
    leader = subprocess.Popen(["sleep", "300"], start_new_session=True)
    try:
        Path(pid_path).write_text(str(leader.pid))
        assert await transport.kill(pid_path, grace_s=5) is True
        assert await transport.exit_code(pid_path) == 143
    finally:
        leader.kill()
        leader.wait()


async def test_small_files(transport: Transport, tmp_path: Path) -> None:
    secret = tmp_path / "deep" / "lease.json"
    await transport.put_text(str(secret), '{"until": 12}\n', mode=0o600)
    assert secret.read_text() == '{"until": 12}\n'
    assert oct(secret.stat().st_mode & 0o777) == oct(0o600)
    assert await transport.read_text(str(secret)) == '{"until": 12}\n'
    assert await transport.exists(str(secret)) and not await transport.exists(str(tmp_path / "nope"))
    assert await transport.file_size(str(secret)) == 14
    assert await transport.file_size(str(tmp_path / "nope")) is None
    info = await transport.stat(str(secret))
    assert info is not None and info.size == 14 and not info.is_dir
    assert await transport.stat(str(tmp_path / "nope")) is None
    await transport.makedirs(str(tmp_path / "a" / "b"))
    assert (tmp_path / "a" / "b").is_dir()
    assert await transport.has_command("sh") and not await transport.has_command("no-such-tool-gpurun")
    with pytest.raises(CommandError):
        await transport.read_text(str(tmp_path / "missing.txt"))


async def test_relative_paths_are_relative_to_the_transport_home(transport: Transport, tmp_path: Path) -> None:
    name = f"gpurun-test-{os.getpid()}-{id(transport)}.txt"
    await transport.put_text(name, "home")
    if isinstance(transport, LocalTransport):
        home = transport.root
    else:
        home = Path((await transport.run("pwd")).stdout.strip())
    try:
        assert (home / name).read_text() == "home"
        assert await transport.read_text(name) == "home"
    finally:
        (home / name).unlink()
