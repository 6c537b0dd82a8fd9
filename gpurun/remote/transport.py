"""One interface to the machine a run trains on: SSH to a rented instance, or subprocesses on this machine.

The job talks to a `Transport` and never knows which one it has: `SshSession` (session.py) for rented and
declared hosts, `LocalTransport` (local_transport.py) for `--provider local`. This module holds what both share:
the protocol, result types, the shell text for wrapped commands and the box helper's command lines, so the two
cannot drift.

Detached processes follow one convention on both sides, kept by one helper, templates/boxproc.py (run on the
box as `python3 -I -c SOURCE ...`, imported here): the command leads its own session and process group, its
pid (= the group's id) is in `pid_path`, and its exit code lands in `exit_path_for(pid_path)` when it ends.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import importlib.util
import io
import json
import re
import shlex
import sys
import tokenize
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import NamedTuple, Protocol, runtime_checkable

from gpurun.errors import SshError

#: every remote command runs with these, set inline (sshd's AcceptEnv is not to be relied on)
BASE_ENV: dict[str, str] = {"PYTHONUNBUFFERED": "1"}

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: the box-side process helper: launch detached, pid and exit files, the group check, stop (stdlib only)
BOXPROC_PATH = Path(__file__).resolve().parent.parent / "templates" / "boxproc.py"


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


class StartFailed(CommandError):
    """A detached command could not even start (not found, not executable); `rc` is its exit code (127, 126)."""


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
        self,
        argv: Sequence[str],
        pid_path: str,
        *,
        stdout: str,
        stderr: str | None = None,
        append: bool = True,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> int:
        """Start `argv` through the box helper as the leader of its own session and process group, immune to
        this connection dropping; returns its pid once recorded in `pid_path`. Output goes to `stdout` (and
        `stderr`, else the same file), appended or truncated; `env` adds to the environment. StartFailed when the
        command could not start at all."""
        ...

    async def is_running(self, pid_path: str) -> bool:
        """No exit code recorded yet and the command's group alive (zombies count as dead)."""
        ...

    async def exit_code(self, pid_path: str) -> int | None: ...

    async def kill(self, pid_path: str, *, grace_s: float = 10.0) -> bool:
        """SIGTERM the group, SIGKILL what is left after `grace_s`, make sure an exit code is recorded; True if
        something ran."""
        ...

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


@functools.lru_cache(maxsize=1)
def boxproc() -> ModuleType:
    """The box process helper (templates/boxproc.py, stdlib only) loaded as a module, for this machine's side."""
    name = "gpurun_boxproc"  # the watchdog template loads it under the same name: one module object
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BOXPROC_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    sys.modules[name] = module
    return module


@functools.lru_cache(maxsize=1)
def boxproc_source() -> str:
    """The helper's source as it runs on the box inside a command line (`python3 -c`): without its comments."""
    return compact_source(BOXPROC_PATH.read_text(encoding="utf-8"))


def compact_source(source: str) -> str:
    """`source` without docstrings, comments and blank lines; every other line exactly as written. (Not
    ast.unparse: on Python 3.12+ it writes f-strings that reuse their own quotes, which Python 3.8 cannot read.)"""
    tree = ast.parse(source)
    dropped: set[int] = set()
    stand_ins: dict[int, str] = {}  # a docstring that is the whole body becomes `pass`
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and _docstring(node):
            doc = node.body[0]
            dropped.update(range(doc.lineno, (doc.end_lineno or doc.lineno) + 1))
            if len(node.body) == 1:
                stand_ins[doc.lineno] = " " * doc.col_offset + "pass"
    comments: dict[int, int] = {}
    verbatim: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.start[1]
        elif token.end[0] > token.start[0]:  # a string over several lines: its inner lines stay as they are
            verbatim.update(range(token.start[0] + 1, token.end[0] + 1))
    kept = []
    for number, line in enumerate(source.splitlines(), 1):
        if number in stand_ins:
            kept.append(stand_ins[number])
        elif number in verbatim and number not in dropped:
            kept.append(line)
        elif number not in dropped:
            text = line[: comments[number]].rstrip() if number in comments else line.rstrip()
            if text.strip():
                kept.append(text)
    return "\n".join(kept) + "\n"


def _docstring(node: ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    first = node.body[0] if node.body else None
    return isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str)


def boxproc_command(args: Sequence[str], *, python: str = "python3") -> str:
    """A shell line that runs the helper on the box without any file there: `python3 -I -c SOURCE ARGS...`
    (-I: the caller's PYTHONPATH, meant for the launched command, must not reach the helper itself)."""
    return " ".join(q(word) for word in (python, "-I", "-c", boxproc_source(), *args))


def exit_path_for(pid_path: str) -> str:
    """Where a detached command's exit code is written (the helper owns the names): `runner.pid` → `runner.exit`."""
    return str(boxproc().exit_path(pid_path))


def launch_args(
    argv: Sequence[str], pid_path: str, *, stdout: str, stderr: str | None, append: bool, cwd: str | None
) -> list[str]:
    """The helper's `launch` arguments (see templates/boxproc.py)."""
    if not argv:
        raise ValueError("nothing to launch")
    args = ["launch", "--pid-file", pid_path, "--stdout", stdout]
    args += ["--stderr", stderr] if stderr else []
    args += ["--append"] if append else []
    args += ["--cwd", cwd] if cwd else []
    return [*args, "--", *argv]


def launched_pid(argv: Sequence[str], result: CommandResult, where: str) -> int:
    """The pid the helper's `launch` reported; StartFailed when the command could not start, CommandError when
    the launch itself failed."""
    shown = short(" ".join(argv))
    answer: object = None
    lines = result.stdout.strip().splitlines()
    with contextlib.suppress(ValueError, IndexError):
        answer = json.loads(lines[-1])
    if isinstance(answer, dict):
        pid, code = answer.get("started"), answer.get("exited")
        if isinstance(pid, int) and not isinstance(pid, bool) and pid > 1:
            return pid
        if isinstance(code, int) and not isinstance(code, bool):
            detail = str(answer.get("error") or "")[:500]
            raise StartFailed(f"`{shown}` could not start (exit {code}): {detail}", rc=code, stderr=detail, where=where)
    detail = (str(answer.get("error") or "") if isinstance(answer, dict) else "") or tail(result.stderr) or "no output"
    raise CommandError(
        f"could not launch `{shown}`: {detail}", rc=result.rc or 1, stdout=result.stdout, stderr=result.stderr,
        where=where,
    )  # fmt: skip


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
