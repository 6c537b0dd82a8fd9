"""One behaviour, two transports: every test here runs over SSH to the real sshd and on this machine."""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
from pathlib import Path

import pytest

from gpurun.errors import SshError
from gpurun.remote.local_transport import LocalTransport
from gpurun.remote.session import SshSession
from gpurun.remote.transport import CommandError, Transport
from tests.remote_helpers import process_alive, transport_fixture, wait_for  # noqa: F401  (the fixture)

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
    pid = await transport.start_detached(f"{PY} -c {shlex.quote(script)}", str(log), pid_path, env={"GPURUN_X": "1"})
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
    await transport.start_detached("echo oops >&2; exit 5", str(tmp_path / "bad.log"), pid_path)
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
    await transport.start_detached(cmd, str(tmp_path / "k.log"), pid_path)
    assert wait_for(lambda: children.exists() and children.read_text().strip().isdigit())
    child = int(children.read_text())
    assert process_alive(child)
    assert await transport.kill(pid_path, grace_s=5) is True
    assert not await transport.is_running(pid_path)
    assert wait_for(lambda: not process_alive(child), timeout=5)
    assert await transport.exit_code(pid_path) == 143
    assert await transport.kill(pid_path) is False  # already gone


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
