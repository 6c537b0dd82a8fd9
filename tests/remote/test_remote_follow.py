"""Following the runner's event file: live, resumable from an offset, and exact across SSH drops."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import pytest

from gpurun.errors import TransientSshError
from gpurun.events import Done, ErrorEvent, LogLine, Step, parse_line
from gpurun.remote.follow import READER, EventFollower, FollowedEvent
from gpurun.remote.local_transport import LocalTransport
from gpurun.remote.transport import Transport, boxproc_source
from tests.support.processes import child_pids
from tests.support.remote_helpers import ssh_session, transport_fixture  # noqa: F401  (the fixture)
from tests.support.sshd import SshServer

PY = sys.executable

# A stand-in runner: prints the prepared lines to stdout (= the events file), some of them in two writes so
# the follower sees half lines, pausing between lines; optionally waits for a gate file before the last one.
FAKE_RUNNER = r"""
import os, sys, time
lines = open(sys.argv[1], encoding="utf-8").read().split("\n")[:-1]
delay, gate, tail = float(sys.argv[2]), sys.argv[3], sys.argv[4]
for i, line in enumerate(lines):
    if gate != "-" and i == len(lines) - 1:
        while not os.path.exists(gate):
            time.sleep(0.02)
    if i % 7 == 3 and len(line) > 10:
        sys.stdout.write(line[:10]); sys.stdout.flush(); time.sleep(delay)
        sys.stdout.write(line[10:] + "\n")
    else:
        sys.stdout.write(line + "\n")
    sys.stdout.flush()
    time.sleep(delay)
if tail != "-":
    sys.stdout.write(tail); sys.stdout.flush()
    sys.exit(1)
"""


def script_lines(count: int, *, done: bool = True) -> list[str]:
    lines = []
    for i in range(count):
        if i % 10 == 5:
            lines.append(f"Loading weights… ünïcode line {i}")  # non-JSON, multibyte: offsets are bytes
        else:
            lines.append(Step(step=i, total_steps=count, loss=1.0 / (i + 1), t=1000.0 + i).to_json())
    if done:
        lines.append(Done(steps=count, final="lora.safetensors", t=2000.0).to_json())
    return lines


async def start_runner(
    transport: Transport, folder: Path, lines: list[str], *, delay: float = 0.005, gate: str = "-", tail: str = "-"
) -> tuple[str, str]:
    source = folder / "lines.txt"
    source.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    events, pid = str(folder / "run" / "events.jsonl"), str(folder / "run" / "runner.pid")
    await transport.start_detached([PY, "-c", FAKE_RUNNER, str(source), str(delay), gate, tail], pid, stdout=events)
    return events, pid


def follower(transport: Transport, events: str, pid: str, **options) -> EventFollower:
    options.setdefault("python", PY)
    options.setdefault("poll_interval", 0.02)
    return EventFollower(transport, events, pid, reconnect=getattr(transport, "reconnect", None), **options)


async def test_follows_every_event_in_order_and_stops_at_done(transport: Transport, tmp_path: Path) -> None:
    lines = script_lines(60)
    events, pid = await start_runner(transport, tmp_path, lines)
    got: list[FollowedEvent] = [item async for item in follower(transport, events, pid)]
    assert [item.line for item in got] == lines
    assert isinstance(got[-1].event, Done) and isinstance(got[5].event, LogLine)
    assert got[-1].offset == Path(events).stat().st_size
    assert [item.offset for item in got] == sorted({item.offset for item in got})


async def test_resumes_from_a_stored_offset(transport: Transport, tmp_path: Path) -> None:
    """`gpurun attach`: a second follower starts where the first stopped, without gaps or repeats."""
    lines = script_lines(30)
    gate = tmp_path / "gate"
    events, pid = await start_runner(transport, tmp_path, lines, gate=str(gate))
    first = follower(transport, events, pid)
    seen = []
    async for item in first:
        seen.append(item.line)
        if len(seen) == 12:
            break
    gate.touch()
    second = follower(transport, events, pid, offset=first.offset)
    seen += [item.line async for item in second]
    assert seen == lines and second.finished == "terminal"


async def test_a_crashed_runner_ends_the_stream_with_its_last_words(transport: Transport, tmp_path: Path) -> None:
    lines = script_lines(8, done=False)
    events, pid = await start_runner(transport, tmp_path, lines, tail="Traceback: CUDA out of memory")
    stream = follower(transport, events, pid)
    got = [item async for item in stream]
    assert [item.line for item in got] == [*lines, "Traceback: CUDA out of memory"]
    assert stream.finished == "runner-gone" and stream.runner_exit == 1
    assert got[-1].offset == Path(events).stat().st_size


async def test_an_error_event_is_terminal(transport: Transport, tmp_path: Path) -> None:
    lines = [*script_lines(3, done=False), ErrorEvent(message="dataset empty", t=1.0).to_json(), "after"]
    events, pid = await start_runner(transport, tmp_path, lines)
    stream = follower(transport, events, pid)
    got = [item async for item in stream]
    assert isinstance(got[-1].event, ErrorEvent) and len(got) == 4 and stream.finished == "terminal"


async def test_heartbeats_keep_a_quiet_runner_followed_without_reconnecting(
    transport: Transport, tmp_path: Path
) -> None:
    lines = script_lines(1)
    events, pid = await start_runner(transport, tmp_path, lines, delay=3.0)  # silent for longer than the stall limit
    stream = follower(transport, events, pid, heartbeat_s=0.1, stall_timeout_s=2.0)
    assert [item.line async for item in stream] == lines
    assert stream.reconnects == 0


async def _follow_with_a_drop(
    transport: Transport, tmp_path: Path, drop, *, count: int = 200, drop_after: int = 40
) -> tuple[list[str], list[FollowedEvent], EventFollower]:
    lines = script_lines(count)
    events, pid = await start_runner(transport, tmp_path, lines, delay=0.01)
    stream = follower(transport, events, pid, heartbeat_s=0.5, stall_timeout_s=5)
    got: list[FollowedEvent] = []
    async for item in stream:
        got.append(item)
        if len(got) == drop_after:
            await drop()
    return lines, got, stream


@pytest.mark.sshd
async def test_client_side_connection_drop_loses_and_repeats_nothing(sshd_server: SshServer, tmp_path: Path) -> None:
    session = await ssh_session(sshd_server, "follow-drop")
    try:

        async def drop() -> None:
            session.connection.abort()

        lines, got, stream = await _follow_with_a_drop(session, tmp_path, drop)
        assert stream.reconnects >= 1
        assert [item.line for item in got] == lines  # no loss, no duplicate, same order
        steps = [item.event for item in got if isinstance(item.event, Step)]
        assert [e.to_json() for e in steps] == [parse_line(x).to_json() for x in lines if '"step"' in x]
    finally:
        await session.close()


@pytest.mark.sshd
async def test_server_side_kill_of_the_ssh_connection_is_survived(sshd_server: SshServer, tmp_path: Path) -> None:
    """Kill the sshd processes serving the connection (what a flaky network or a restarted sshd does)."""
    session = await ssh_session(sshd_server, "follow-kill")
    master = int((sshd_server.root / "sshd.pid").read_text())

    async def drop() -> None:
        killed = 0
        for child in child_pids(master):
            os.kill(child, signal.SIGKILL)
            killed += 1
        assert killed >= 1

    try:
        lines, got, stream = await _follow_with_a_drop(session, tmp_path, drop)
        assert stream.reconnects >= 1
        assert [item.line for item in got] == lines
    finally:
        await session.close()


async def test_local_reader_killed_mid_stream_resumes_exactly(tmp_path: Path) -> None:
    local = LocalTransport(tmp_path / "home")

    async def drop() -> None:
        for pid in _pids_running(READER.strip().splitlines()[0], str(tmp_path)):
            os.kill(pid, signal.SIGKILL)

    lines, got, stream = await _follow_with_a_drop(local, tmp_path, drop)
    assert stream.reconnects >= 1
    assert [item.line for item in got] == lines


@pytest.mark.sshd
async def test_without_a_reconnect_callable_a_drop_is_raised(sshd_server: SshServer, tmp_path: Path) -> None:
    session = await ssh_session(sshd_server, "follow-noretry")
    lines = script_lines(100)
    events, pid = await start_runner(session, tmp_path, lines, delay=0.01)
    stream = EventFollower(session, events, pid, python=PY, poll_interval=0.02)
    got = []
    with pytest.raises(TransientSshError):
        async for item in stream:
            got.append(item)
            if len(got) == 5:
                session.connection.abort()
    # the offset still points just past the last delivered event: a later attach continues from there
    assert stream.offset == got[-1].offset
    await session.reconnect()
    rest = [item.line async for item in follower(session, events, pid, offset=stream.offset)]
    assert [item.line for item in got] + rest == lines
    await session.close()


def _pids_running(marker: str, folder: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if marker in cmdline and folder in cmdline:
                found.append(int(entry.name))
    return found


def test_frames_are_plain_json(tmp_path: Path) -> None:
    """The reader's frames parse with json alone (stdlib on the instance side, nothing else)."""
    import subprocess

    events = tmp_path / "e.jsonl"
    events.write_bytes(b'{"type":"log"}\nhalf')
    (tmp_path / "r.exit").write_text("0\n")
    out = subprocess.run(
        [PY, "-c", READER, boxproc_source(), str(events), "0", str(tmp_path / "r.pid"), "0.01", "1"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    frames = [json.loads(line) for line in out.stdout.splitlines()]
    assert frames == [
        {"o": 15, "l": '{"type":"log"}'},
        {"o": 19, "l": "half", "partial": True},
        {"end": True, "o": 19, "exit": 0},
    ]


async def test_follow_does_not_block_the_event_loop(transport: Transport, tmp_path: Path) -> None:
    """Other coroutines (the lease renewal, the live view) keep running while following."""
    lines = script_lines(20)
    events, pid = await start_runner(transport, tmp_path, lines, delay=0.02)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    got = [item async for item in follower(transport, events, pid)]
    task.cancel()
    assert len(got) == len(lines) and ticks > 10
