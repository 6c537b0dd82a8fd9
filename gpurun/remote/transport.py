"""One interface to the machine a run trains on: SSH to a rented instance, or subprocesses on this machine.

`job.py` talks to a `Transport` and never knows which one it has: `SshSession` (session.py) for rented and
declared hosts, `LocalTransport` (local.py) for `--provider local`. This module holds what both share: the
protocol, result types, and the shell text for wrapped and detached commands, so the two cannot drift.

Detached processes follow one convention on both sides: the launcher becomes a session leader and writes
its pid, which is also the process-group id of everything it starts, to `pid_path`; the command's exit code
lands in `exit_path_for(pid_path)` when it ends; stdout and stderr are appended to `log_path`.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

from gpurun.errors import SshError

#: every remote command runs with these, set inline (sshd's AcceptEnv is not to be relied on)
BASE_ENV: dict[str, str] = {"PYTHONUNBUFFERED": "1"}

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class CommandResult(NamedTuple):
    """What a finished command left behind; unpacks as `rc, stdout, stderr`."""

    rc: int
    stdout: str
    stderr: str


class CommandError(SshError):
    """A command on the instance exited non-zero (or timed out); carries its exit code and output."""

    def __init__(
        self,
        message: str,
        *,
        rc: int,
        stdout: str = "",
        stderr: str = "",
        where: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, where=where, hint=hint)
        self.rc = rc
        self.stdout = stdout
        self.stderr = stderr


class FileChannelUnavailable(SshError):
    """The instance offers no file channel (no SFTP server); rsync may still work."""


@dataclass(frozen=True, slots=True)
class FileStat:
    size: int
    mtime: float
    is_dir: bool = False


@dataclass(frozen=True, slots=True)
class RsyncRoute:
    """How rsync reaches the other side: through `ssh_argv` to `prefix` (`user@host:`), or locally."""

    ssh_argv: tuple[str, ...] | None
    prefix: str = ""
    #: for local routes: what relative paths are relative to (remote ones are relative to the SSH home)
    base: str | None = None

    def target(self, path: str) -> str:
        if self.base is not None and not path.startswith("/"):
            path = f"{self.base.rstrip('/')}/{path}"
        return f"{self.prefix}{path}"


@runtime_checkable
class Transport(Protocol):
    """The operations the orchestrator needs on the training machine. Paths are strings in its filesystem;
    relative ones are relative to the transport's home (the SSH user's home, or LocalTransport's root)."""

    #: where errors happen, for messages: `root@1.2.3.4:22` or `local`
    where: str

    async def reconnect(self, *, deadline: float | None = None) -> Transport:
        """A fresh connection to the same machine (after a drop), retried until `deadline` (monotonic)."""
        ...

    async def run(
        self,
        cmd: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> CommandResult: ...

    def stream_lines(
        self, cmd: str, *, check: bool = True, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> AsyncIterator[str]: ...

    async def start_detached(
        self, cmd: str, log_path: str, pid_path: str, *, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> int: ...

    async def is_running(self, pid_path: str) -> bool: ...

    async def exit_code(self, pid_path: str) -> int | None: ...

    async def kill(self, pid_path: str, *, grace_s: float = 10.0) -> bool: ...

    async def put_text(self, path: str, text: str, mode: int = 0o644) -> None: ...

    async def read_text(self, path: str) -> str: ...

    async def exists(self, path: str) -> bool: ...

    async def stat(self, path: str) -> FileStat | None: ...

    async def file_size(self, path: str) -> int | None: ...

    async def makedirs(self, path: str) -> None: ...

    async def has_command(self, name: str) -> bool: ...

    async def put_file(self, local: Path, remote: str) -> None: ...

    async def get_file(self, remote: str, local: Path, *, max_bytes: int | None = None) -> None:
        """Download one regular file (a link or a device is refused); more than `max_bytes` is a SyncError."""
        ...

    async def list_files(self, remote_dir: str) -> dict[str, FileStat]: ...

    def rsync_route(self) -> RsyncRoute: ...

    async def close(self) -> None: ...


def q(value: str | Path) -> str:
    """Shell-quote one word."""
    return shlex.quote(str(value))


def check_env(env: Mapping[str, str] | None) -> dict[str, str]:
    """BASE_ENV plus `env`, with every name checked (a bad name would otherwise be shell syntax)."""
    merged = {**BASE_ENV, **(env or {})}
    for name in merged:
        if not _ENV_NAME.match(name):
            raise ValueError(f"invalid environment variable name: {name!r}")
    return merged


def shell_command(cmd: str, *, env: Mapping[str, str] | None = None, cwd: str | None = None) -> str:
    """`cmd` as one POSIX sh command line: `[cd DIR &&] env PYTHONUNBUFFERED=1 ... sh -c CMD`.

    Running the command under `sh -c` makes the result independent of the account's login shell.
    """
    assignments = " ".join(f"{name}={q(value)}" for name, value in check_env(env).items())
    text = f"env {assignments} sh -c {q(cmd)}"
    return f"cd {q(cwd)} && {text}" if cwd else text


def exit_path_for(pid_path: str) -> str:
    """Where a detached command's exit code is written: `runner.pid` → `runner.exit`."""
    stem = pid_path[: -len(".pid")] if pid_path.endswith(".pid") else pid_path
    return f"{stem}.exit"


def detached_body(cmd: str, log_path: str, pid_path: str, *, env: Mapping[str, str] | None, cwd: str | None) -> str:
    """The script a new session leader runs: record its pid (= process group), then start `cmd` in the
    background with its output appended to `log_path` and its exit code written atomically when it ends.

    The output is appended, not truncated, so a restarted runner keeps earlier byte offsets valid for a
    follower. The leader exits at once; the background subshell is re-parented and survives SSH hang-ups
    because it is in its own session, with no controlling terminal to send SIGHUP.
    """
    exit_path = exit_path_for(pid_path)
    inner = shell_command(cmd, env=env, cwd=cwd)
    return (
        f"echo $$ > {q(pid_path)}; "
        f"( {inner}; rc=$?; echo $rc > {q(exit_path + '.tmp')}; mv -f {q(exit_path + '.tmp')} {q(exit_path)} ) "
        f">> {q(log_path)} 2>&1 < /dev/null &"
    )


def detached_launcher(cmd: str, log_path: str, pid_path: str, *, env: Mapping[str, str] | None, cwd: str | None) -> str:
    """A shell line that starts `cmd` detached (new session via setsid, or python's os.setsid) and prints
    the process-group id."""
    body = detached_body(cmd, log_path, pid_path, env=env, cwd=cwd)
    exit_path = exit_path_for(pid_path)
    dirs = " ".join(q(str(Path(p).parent)) for p in (log_path, pid_path))
    py_setsid = "import os,sys; os.setsid(); os.execvp('sh', ['sh', '-c', sys.argv[1]])"
    return (
        f"mkdir -p {dirs} && rm -f {q(pid_path)} {q(exit_path)} && "
        f"if command -v setsid >/dev/null 2>&1; then setsid sh -c {q(body)}; "
        f"elif command -v python3 >/dev/null 2>&1; then python3 -c {q(py_setsid)} {q(body)}; "
        "else echo 'gpurun: cannot detach: neither setsid nor python3 is installed' >&2; exit 127; fi; "
        f"i=0; while [ ! -s {q(pid_path)} ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; "
        f"cat {q(pid_path)}"
    )


def _group_alive_fn() -> str:
    # $3 of the stat fields after the command name is the process group, $1 the state
    return (
        "group_alive() { pg=$1; if [ -r /proc/self/stat ]; then "
        "for d in /proc/[0-9]*; do "
        'read -r s < "$d/stat" 2>/dev/null || continue; s=${s##*) }; set -- $s; '
        '[ "$3" = "$pg" ] && [ "$1" != Z ] && return 0; '
        "done; return 1; "
        'else kill -0 -"$pg" 2>/dev/null; fi; }; '
    )


def running_check(pid_path: str) -> str:
    """Exit 0 when the detached group is alive and has not recorded an exit code."""
    return (
        _group_alive_fn() + f"[ -e {q(exit_path_for(pid_path))} ] && exit 1; "
        f'pg=$(cat {q(pid_path)} 2>/dev/null) || exit 1; [ -n "$pg" ] || exit 1; '
        'group_alive "$pg"'
    )


def kill_script(pid_path: str, grace_s: float) -> str:
    """SIGTERM the whole group, wait up to `grace_s`, then SIGKILL; record the exit code; print `killed` or
    `gone`. (dash's kill takes `-PGID` but not `--`.)"""
    exit_path = exit_path_for(pid_path)
    ticks = max(1, int(grace_s * 10))
    return (
        _group_alive_fn() + f"pg=$(cat {q(pid_path)} 2>/dev/null) || {{ echo gone; exit 0; }}; "
        'group_alive "$pg" || { echo gone; exit 0; }; '
        'kill -TERM -"$pg" 2>/dev/null; code=143; i=0; '
        f'while group_alive "$pg" && [ $i -lt {ticks} ]; do sleep 0.1; i=$((i+1)); done; '
        'if group_alive "$pg"; then kill -KILL -"$pg" 2>/dev/null; code=137; fi; '
        f"[ -e {q(exit_path)} ] || echo $code > {q(exit_path)}; echo killed"
    )


def short(cmd: str, limit: int = 80) -> str:
    """A command shortened for messages."""
    flat = " ".join(cmd.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def tail(text: str, lines: int = 8) -> str:
    """The last lines of some output, for error messages."""
    kept = [line for line in text.strip().splitlines() if line.strip()][-lines:]
    return " | ".join(kept)


def command_failed(cmd: str, result: CommandResult, where: str) -> CommandError:
    detail = tail(result.stderr) or tail(result.stdout) or "no output"
    return CommandError(
        f"`{short(cmd)}` exited with {result.rc}: {detail}",
        rc=result.rc,
        stdout=result.stdout,
        stderr=result.stderr,
        where=where,
    )
