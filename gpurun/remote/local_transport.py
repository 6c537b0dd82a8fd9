"""The `Transport` interface on this machine, for `--provider local`: subprocesses and plain files, no SSH.

Same semantics as `SshSession`: commands run under `sh -c` with PYTHONUNBUFFERED=1, relative paths are
relative to the transport's root, detached processes go through the same box helper (templates/boxproc.py: run as
a script to launch, imported to check and stop), so the job has one code path and the follower one reader.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gpurun.errors import SyncError
from gpurun.remote import transport as tp
from gpurun.remote.transport import CommandError, CommandResult, FileStat, RsyncRoute

#: credentials of this client that no process it starts here needs: the runner and the watchdog get what they
#: need explicitly (HF_TOKEN for a gated model), never the provider accounts' keys
SECRET_ENV = ("VAST_API_KEY", "RUNPOD_API_KEY", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def child_environment() -> dict[str, str]:
    """This process's environment without its secrets, for everything started on this machine."""
    return {k: v for k, v in os.environ.items() if k not in SECRET_ENV}


class LocalTransport:
    """Run the job on this machine. `root` plays the role of the SSH user's home."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path.home()
        self.root.mkdir(parents=True, exist_ok=True)
        self.where = "local"

    def path(self, path: str) -> Path:
        """A transport path on this machine (relative ones under `root`)."""
        candidate = Path(path)
        return candidate if candidate.is_absolute() else self.root / candidate

    async def reconnect(self, *, deadline: float | None = None) -> LocalTransport:
        """Nothing to reconnect; present so callers can treat both transports alike."""
        return self

    async def close(self) -> None:
        return None

    async def __aenter__(self) -> LocalTransport:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- commands ---------------------------------------------------------------------------------------------

    async def _spawn(self, cmd: str, env: Mapping[str, str] | None, cwd: str | None, **kwargs: Any):
        # its own session, so a timeout or an abandoned stream can stop the whole tree, not just `sh`
        return await asyncio.create_subprocess_exec(
            "sh", "-c", tp.shell_command(cmd, env=env, cwd=str(self.path(cwd)) if cwd else None),
            cwd=self.root, start_new_session=True, env=child_environment(), **kwargs,
        )  # fmt: skip

    async def run(
        self,
        cmd: str,
        *,
        check: bool = True,
        timeout: float | None = None,
        input: str | None = None,
        env: Mapping[str, str] | None = None,
        cwd: str | None = None,
    ) -> CommandResult:
        proc = await self._spawn(
            cmd, env, cwd,
            stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        data = input.encode() if input is not None else None
        try:
            out, err = await asyncio.wait_for(proc.communicate(data), timeout)
        except asyncio.TimeoutError:
            _kill_group(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise CommandError(f"`{tp.short(cmd)}` timed out after {timeout:g} s", rc=124, where=self.where) from None
        except asyncio.CancelledError:
            _kill_group(proc.pid, signal.SIGKILL)
            raise
        result = CommandResult(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))
        if check and result.rc != 0:
            raise tp.command_failed(cmd, result, self.where)
        return result

    async def stream_lines(
        self, cmd: str, *, check: bool = True, env: Mapping[str, str] | None = None, cwd: str | None = None
    ) -> AsyncIterator[str]:
        pipes = {"stdin": subprocess.DEVNULL, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
        proc = await self._spawn(cmd, env, cwd, **pipes)
        assert proc.stdout is not None and proc.stderr is not None
        stderr: collections.deque[str] = collections.deque(maxlen=40)
        err_stream = proc.stderr

        async def drain_stderr() -> None:
            async for raw in err_stream:
                stderr.append(raw.decode(errors="replace"))

        drain = asyncio.create_task(drain_stderr())
        finished = False
        try:
            async for raw in proc.stdout:
                line = raw.decode(errors="replace")
                yield line[:-1] if line.endswith("\n") else line
            await proc.wait()
            await drain
            finished = True
            if check and proc.returncode != 0:
                raise tp.command_failed(cmd, CommandResult(proc.returncode or 0, "", "".join(stderr)), self.where)
        finally:
            drain.cancel()
            if not finished and proc.returncode is None:
                _kill_group(proc.pid, signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await proc.wait()

    async def has_command(self, name: str) -> bool:
        return shutil.which(name) is not None

    # -- detached processes ------------------------------------------------------------------------------------

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
        # The helper runs as a script, not in this process: it forks, which an asyncio process with threads
        # must not do. Its monitor and the command are re-parented and outlive us (that is what --detach relies on).
        args = tp.launch_args(
            argv, str(self.path(pid_path)), stdout=str(self.path(stdout)),
            stderr=str(self.path(stderr)) if stderr else None, append=append,
            cwd=str(self.path(cwd)) if cwd else None,
        )  # fmt: skip
        helper = " ".join(tp.q(word) for word in (sys.executable, "-I", str(tp.BOXPROC_PATH), *args))
        result = await self.run(helper, env=env, check=False)
        return tp.launched_pid(argv, result, self.where)

    async def is_running(self, pid_path: str) -> bool:
        return bool(tp.boxproc().running(str(self.path(pid_path))))

    async def exit_code(self, pid_path: str) -> int | None:
        code = tp.boxproc().read_exit_code(tp.exit_path_for(str(self.path(pid_path))))
        return None if code is None else int(code)

    async def kill(self, pid_path: str, *, grace_s: float = 10.0) -> bool:
        return bool(await asyncio.to_thread(tp.boxproc().stop, str(self.path(pid_path)), grace_s))

    # -- files -------------------------------------------------------------------------------------------------

    async def put_text(self, path: str, text: str, mode: int = 0o644) -> None:
        target = self.path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".gpurun-tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, target)

    async def read_text(self, path: str) -> str:
        try:
            return self.path(path).read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            raise CommandError(f"cannot read {path}: {exc.strerror}", rc=1, where=self.where) from None

    async def exists(self, path: str) -> bool:
        return self.path(path).exists()

    async def stat(self, path: str) -> FileStat | None:
        try:
            info = self.path(path).stat()
        except FileNotFoundError:
            return None
        return FileStat(size=info.st_size, mtime=info.st_mtime, is_dir=os.path.isdir(self.path(path)))

    async def file_size(self, path: str) -> int | None:
        info = await self.stat(path)
        return info.size if info is not None and not info.is_dir else None

    async def makedirs(self, path: str) -> None:
        self.path(path).mkdir(parents=True, exist_ok=True)

    async def put_file(self, local: Path, remote: str) -> None:
        target = self.path(remote)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".gpurun-part")
        await asyncio.to_thread(shutil.copy2, local, tmp)
        os.replace(tmp, target)

    async def get_file(self, remote: str, local: Path, *, max_bytes: int | None = None) -> None:
        source = self.path(remote)
        if source.is_symlink() or not source.is_file():
            raise SyncError(f"no such regular file: {remote}", where=self.where)
        if max_bytes is not None and source.stat().st_size > max_bytes:
            raise SyncError(f"{remote} is over {max_bytes} bytes", where=self.where)
        await asyncio.to_thread(shutil.copy2, source, local)

    async def list_files(self, remote_dir: str) -> dict[str, FileStat]:
        base = self.path(remote_dir)
        found: dict[str, FileStat] = {}
        if not base.is_dir():
            return found
        for dirpath, _dirs, files in os.walk(base):
            for name in files:
                full = Path(dirpath) / name
                with contextlib.suppress(FileNotFoundError):
                    info = full.stat()
                    found[full.relative_to(base).as_posix()] = FileStat(info.st_size, info.st_mtime)
        return found

    def rsync_route(self) -> RsyncRoute:
        return RsyncRoute(None, "", base=str(self.root))


def _kill_group(group: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)
