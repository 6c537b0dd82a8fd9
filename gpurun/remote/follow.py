"""Follow the runner's JSON-lines event file across SSH drops: no event lost, none repeated.

A small stdlib-only reader runs next to the file (on the instance, or here for the local transport). It reads
from a byte offset and sends one JSON frame per complete line, carrying the offset just past that line, plus
heartbeats while idle and a final frame once the runner has exited and the file is drained. The client
advances its offset only on whole frames, so after a reconnect it restarts the reader at the end of the last
line it actually received. A frame cut off by the drop fails to parse and is simply read again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gpurun.errors import RemoteError, TransientSshError
from gpurun.events import Done, ErrorEvent, Event, parse_line
from gpurun.remote import transport as tp
from gpurun.remote.transport import CommandError, Transport

# Runs as `python3 -c READER BOXPROC_SOURCE FILE OFFSET PID_PATH POLL HEARTBEAT`: the box helper's source comes
# along (no file of gpurun's may exist on the box yet) and decides whether the runner still runs, and where its
# exit code is. Frames: {"o": end, "l": text} per line ("partial": true for an unterminated last line of a dead
# runner), {"hb": offset} while idle, {"end": true, "o": offset, "exit": code} when the runner is gone and
# everything was sent.
READER = r"""
import json, os, sys, time, types
boxproc = types.ModuleType("gpurun_boxproc")
exec(compile(sys.argv[1], "boxproc.py", "exec"), boxproc.__dict__)
path, offset, pid_path = sys.argv[2], int(sys.argv[3]), sys.argv[4]
poll, heartbeat = float(sys.argv[5]), float(sys.argv[6])
exit_path = boxproc.exit_path(pid_path)
def send(frame):
    sys.stdout.write(json.dumps(frame, separators=(",", ":")) + "\n")
    sys.stdout.flush()
def alive():
    return boxproc.running(pid_path)
def exit_code():
    return boxproc.read_exit_code(exit_path)
buf, last = b"", time.time()
while True:
    running = alive()  # sampled before reading: whatever a dead runner wrote is read below
    try:
        with open(path, "rb") as handle:
            if os.fstat(handle.fileno()).st_size < offset:
                send({"error": "the events file shrank below offset %d" % offset})
                sys.exit(3)
            handle.seek(offset + len(buf))
            chunk = handle.read(1 << 20)
    except FileNotFoundError:
        chunk = b""
    if chunk:
        buf += chunk
        lines = buf.split(b"\n")
        buf = lines.pop()
        for line in lines:
            offset += len(line) + 1
            send({"o": offset, "l": line.decode("utf-8", "replace")})
        last = time.time()
        continue
    if not running:
        if buf:
            offset += len(buf)
            send({"o": offset, "l": buf.decode("utf-8", "replace"), "partial": True})
        # the helper's monitor writes the exit file just after the runner exits: give it a moment
        code, wait_until = exit_code(), time.time() + 3.0
        while code is None and time.time() < wait_until:
            time.sleep(0.05)
            code = exit_code()
        send({"end": True, "o": offset, "exit": code})
        break
    if time.time() - last >= heartbeat:
        send({"hb": offset})
        last = time.time()
    time.sleep(poll)
"""

Reconnect = Callable[[], Awaitable[Transport]]


@dataclass(frozen=True, slots=True)
class FollowedEvent:
    event: Event
    #: the line as the runner wrote it (newline stripped)
    line: str
    #: byte offset just past this line: where to resume (store it for `gpurun attach`)
    offset: int


class EventFollower:
    """Iterate the runner's events from `offset`; reconnect through `reconnect` when the stream drops.

    Stops after a terminal event (done / error) or when the runner is gone and the file is drained; then
    `finished` says which and `runner_exit` holds the runner's exit code when known.
    """

    def __init__(
        self,
        transport: Transport,
        events_path: str,
        pid_path: str,
        *,
        offset: int = 0,
        reconnect: Reconnect | None = None,
        python: str = "python3",
        poll_interval: float = 0.2,
        heartbeat_s: float = 5.0,
        stall_timeout_s: float = 30.0,
        max_reconnects: int = 20,
        stop_on_terminal: bool = True,
    ) -> None:
        self.transport = transport
        self.events_path = events_path
        self.pid_path = pid_path
        self.offset = offset
        self.reconnect = reconnect
        self.python = python
        self.poll_interval = poll_interval
        self.heartbeat_s = heartbeat_s
        self.stall_timeout_s = max(stall_timeout_s, 3 * heartbeat_s)
        self.max_reconnects = max_reconnects
        self.stop_on_terminal = stop_on_terminal
        self.reconnects = 0
        self.finished: str | None = None
        self.runner_exit: int | None = None

    def _command(self) -> str:
        args = [
            self.python, "-c", READER, tp.boxproc_source(), self.events_path, str(self.offset), self.pid_path,
            str(self.poll_interval), str(self.heartbeat_s),
        ]  # fmt: skip
        return " ".join(tp.q(a) for a in args)

    async def _frames(self) -> AsyncGenerator[dict[str, Any], None]:
        """Frames of one reader run; any sign of a broken stream is a TransientSshError."""
        stream = self.transport.stream_lines(self._command())
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            while True:
                try:
                    line = await asyncio.wait_for(anext(stream), self.stall_timeout_s)
                except CommandError as exc:
                    if exc.rc < 0 or exc.rc > 128:  # the reader was killed (OOM killer, a cleanup): start another
                        raise TransientSshError(f"the event reader was killed ({exc.rc})", where=exc.where) from None
                    raise
                except StopAsyncIteration:
                    raise TransientSshError(
                        "the event stream ended before the runner did", where=self.transport.where
                    ) from None
                except asyncio.TimeoutError:
                    raise TransientSshError(
                        f"no event or heartbeat for {self.stall_timeout_s:g} s", where=self.transport.where
                    ) from None
                try:
                    frame = json.loads(line)
                except ValueError:
                    # a frame cut short by a dropped connection; the line will be sent again
                    raise TransientSshError("event stream cut mid-line", where=self.transport.where) from None
                if not isinstance(frame, dict):
                    raise TransientSshError("garbled event stream", where=self.transport.where)
                yield frame

    async def __aiter__(self) -> AsyncIterator[FollowedEvent]:
        while True:
            try:
                async with contextlib.aclosing(self._frames()) as frames:
                    async for frame in frames:
                        if "error" in frame:
                            raise RemoteError(f"cannot follow {self.events_path}: {frame['error']}",
                                              where=self.transport.where)  # fmt: skip
                        if "l" in frame:
                            self.offset = int(frame["o"])
                            event = parse_line(str(frame["l"]))
                            yield FollowedEvent(event, str(frame["l"]), self.offset)
                            if self.stop_on_terminal and isinstance(event, (Done, ErrorEvent)):
                                self.finished = "terminal"
                                return
                        elif frame.get("end"):
                            self.runner_exit = frame.get("exit")
                            self.finished = "runner-gone"
                            return
            except TransientSshError:
                if self.reconnect is None or self.reconnects >= self.max_reconnects:
                    raise
                self.reconnects += 1
                self.transport = await self.reconnect()


def follow_events(transport: Transport, events_path: str, pid_path: str, **options: Any) -> EventFollower:
    """Shorthand for `EventFollower(...)`: `async for item in follow_events(t, path, pid): ...`."""
    return EventFollower(transport, events_path, pid_path, **options)
