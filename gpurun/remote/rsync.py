"""rsync: the argv, the run (live progress from `--info=progress2`), the `--stats` summary, the failure map.

Choices, with reasons:
- `-a --no-owner --no-group`: times and modes matter for delta checks; the laptop's uid means nothing there.
- `--partial` (pushes) / `--partial-dir` (pulls): an interrupted upload resumes from what arrived; a pull
  never leaves a half file under its final name in the output folder.
- no `-z` by default: datasets are JPEG/PNG/WebP and LoRAs are fp16 tensors, which barely compress, while zlib
  at ~20-50 MB/s on one core would cap a GPU host's 1 Gbit/s link. `compress=True` adds `-z` (rsync then
  still skips its built-in list of compressed suffixes), worth it only for text-heavy trees on slow links.
- `--timeout`: a stalled transfer fails instead of hanging the phase.
- failures: host-key and key problems are SshError (no retry can fix them), a broken connection is
  TransientSshError (retry resumes thanks to --partial), anything else is SyncError.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from gpurun.errors import SshError, SyncError, TransientSshError
from gpurun.remote.transport import RsyncRoute, tail

MIN_VERSION = (3, 1, 0)  # --info=progress2 and --partial-dir semantics used here
IO_TIMEOUT_S = 120

# rsync exit codes that mean the connection broke (10 socket I/O, 12 protocol stream, 30 timeout in data
# send/receive, 35 timeout waiting for daemon connection, 255 ssh itself failed).
_CONNECTION_CODES = {10, 12, 30, 35, 255}
_PROGRESS = re.compile(r"^\s*([\d,]+)\s+(\d+)%\s+(\S+/s)\s+(\d+:\d{2}:\d{2})")
_STAT_LINES = {
    "files_total": re.compile(r"^Number of files: ([\d,]+)"),
    "files_transferred": re.compile(r"^Number of regular files transferred: ([\d,]+)"),
    "total_size": re.compile(r"^Total file size: ([\d,]+) bytes"),
    "transferred_size": re.compile(r"^Total transferred file size: ([\d,]+) bytes"),
    "literal_bytes": re.compile(r"^Literal data: ([\d,]+) bytes"),
    "matched_bytes": re.compile(r"^Matched data: ([\d,]+) bytes"),
    "bytes_sent": re.compile(r"^Total bytes sent: ([\d,]+)"),
    "bytes_received": re.compile(r"^Total bytes received: ([\d,]+)"),
}


@dataclass(frozen=True, slots=True)
class TransferProgress:
    bytes_done: int
    percent: int
    rate: str = ""
    eta: str = ""


ProgressCallback = Callable[[TransferProgress], None]


@dataclass(frozen=True, slots=True)
class TransferStats:
    """What one transfer did. `literal_bytes` is data actually sent; `matched_bytes` was reused by delta."""

    method: str
    files_transferred: int = 0
    files_total: int = 0
    total_size: int = 0
    transferred_size: int = 0
    literal_bytes: int = 0
    matched_bytes: int = 0
    bytes_sent: int = 0
    bytes_received: int = 0
    seconds: float = 0.0


@functools.lru_cache(maxsize=1)
def local_version() -> tuple[int, ...] | None:
    """This machine's rsync version, or None when there is none or it is not samba rsync (openrsync)."""
    exe = shutil.which("rsync")
    if exe is None:
        return None
    try:
        text = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.match(r"rsync\s+version\s+v?(\d+)\.(\d+)\.(\d+)", text)
    return tuple(int(g) for g in match.groups()) if match else None


def usable_locally() -> bool:
    version = local_version()
    return version is not None and version >= MIN_VERSION


def argv(
    sources: list[str],
    destination: str,
    route: RsyncRoute,
    *,
    excludes: list[str] | tuple[str, ...] = (),
    delete: bool = False,
    compress: bool = False,
    partial_dir: str | None = None,
    copy_links: bool = False,
    timeout_s: int = IO_TIMEOUT_S,
    remote_mkdir: str | None = None,
    bwlimit_kbps: int | None = None,
    extra: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """The rsync command line. `route.ssh_argv` becomes `-e` (quoted so rsync splits it back correctly).

    `-s` (--protect-args; --secluded-args in rsync 3.2.4+) sends file names inside the protocol instead of on
    the remote shell's command line: before 3.2.4 (Ubuntu 20.04, Debian 11, RHEL 8) a name like `10_sks dog` or
    `$(...)` would otherwise be split or executed by the box's shell."""
    args = ["rsync", "-a", "-s", "--no-owner", "--no-group", "--stats", "--info=progress2", f"--timeout={timeout_s}"]
    args.append(f"--partial-dir={partial_dir}" if partial_dir else "--partial")
    if copy_links:
        # file links must arrive as files; the excludes (excludes.upload_excludes) leave out every link that
        # points at a folder or out of the tree, so nothing outside the dataset is followed
        args.append("--copy-links")
    if compress:
        args.append("-z")
    if bwlimit_kbps:
        args.append(f"--bwlimit={int(bwlimit_kbps)}")  # KiB/s; for uploads from a shared home connection
    if delete:
        args.append("--delete")
    args += [f"--exclude={pattern}" for pattern in excludes]
    if route.ssh_argv is not None:
        args += ["-e", shlex.join(route.ssh_argv)]
        if remote_mkdir:
            # create the destination in the same SSH session as the transfer: one round trip fewer than a
            # separate `mkdir -p`, and it works with any remote rsync (unlike --mkpath, new in 3.2.3)
            args.append(f"--rsync-path=mkdir -p {shlex.quote(remote_mkdir)} && rsync")
    return [*args, *extra, *sources, destination]


def parse_progress(chunk: str) -> TransferProgress | None:
    match = _PROGRESS.match(chunk)
    if not match:
        return None
    return TransferProgress(int(match.group(1).replace(",", "")), int(match.group(2)), match.group(3), match.group(4))


def parse_stats(output: str, method: str = "rsync", seconds: float = 0.0) -> TransferStats:
    values: dict[str, int] = {}
    for line in output.splitlines():
        for key, pattern in _STAT_LINES.items():
            match = pattern.match(line.strip())
            if match:
                values[key] = int(match.group(1).replace(",", ""))
    return TransferStats(method=method, seconds=seconds, **values)


async def run(args: list[str], *, where: str, progress: ProgressCallback | None = None) -> TransferStats:
    """Run rsync, feeding `progress` as it goes; return its stats or raise a typed error."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        # its own process group, so stopping it also stops the ssh it runs
        proc = await asyncio.create_subprocess_exec(
            *args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True
        )
    except OSError as exc:
        raise SyncError(f"cannot run rsync: {exc}", where=where, hint="install rsync 3.1 or newer") from None
    assert proc.stdout is not None and proc.stderr is not None
    stderr_task = asyncio.ensure_future(proc.stderr.read())
    output: list[str] = []
    pending = ""
    try:
        while True:
            data = await proc.stdout.read(4096)
            if not data:
                break
            pending += data.decode(errors="replace")
            # progress2 rewrites one line with \r; stats arrive as ordinary lines at the end
            *pieces, pending = re.split(r"[\r\n]", pending)
            for piece in pieces:
                output.append(piece)
                if progress is not None and (update := parse_progress(piece)) is not None:
                    progress(update)
        output.append(pending)
        await proc.wait()
        err = (await stderr_task).decode(errors="replace")
    except asyncio.CancelledError:
        # TERM first: rsync then exits cleanly and the receiver keeps the partial file for the next attempt
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except asyncio.TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)
            await proc.wait()
        stderr_task.cancel()
        raise
    stats = parse_stats("\n".join(output), seconds=loop.time() - started)
    if proc.returncode != 0:
        raise classify_failure(proc.returncode or 0, err, where)
    return stats


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def classify_failure(rc: int, stderr: str, where: str) -> Exception:
    detail = tail(stderr, 4) or "no output"
    if "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return SshError(
            f"rsync refused the host key: {detail}",
            where=where,
            hint="the instance's host key differs from the one pinned on first contact",
        )
    if "Permission denied (publickey" in stderr:
        return SshError(f"rsync: the run's SSH key was rejected: {detail}", where=where)
    if rc in _CONNECTION_CODES:
        return TransientSshError(f"rsync lost the connection (exit {rc}): {detail}", where=where)
    return SyncError(f"rsync failed with exit code {rc}: {detail}", where=where)
