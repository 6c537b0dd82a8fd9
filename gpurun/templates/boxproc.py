#!/usr/bin/env python3
"""gpurun's box-side process helper: launch detached with pid and exit files, check a process group, stop it."""

# STDLIB ONLY, Python 3.8+, like the watchdog beside it: it runs on whatever python3 the box has. One convention,
# three users: the client over SSH (`python3 -I -c <this source> SUBCOMMAND ...`: no file of gpurun's need be on
# the box), the client on its own machine (loaded by file path, or run as a script) and the watchdog (loaded from
# its own folder). See `main` for the command line.
#
# A launched command leads its own session and process group: its pid, which is also the group's id, is in the
# pid file (`runner.pid`), and its exit code lands in the exit file derived from that (`runner.exit`, see
# `exit_path`) when it ends, written atomically by a small monitor process outside the group. "Running" means: no
# exit code recorded yet, and the leader or any member of its group alive. Zombies (exited, not yet reaped) count
# as dead: on a box whose PID 1 reaps lazily they linger for ever.

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import select
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

PID_SUFFIX = ".pid"
EXIT_SUFFIX = ".exit"
#: how long a stop waits for the monitor to record the real exit code before it records its own
RECORD_WAIT_S = 2.0


def exit_path(pid_path: str) -> str:
    """The exit file that belongs to a pid file: `runner.pid` -> `runner.exit` (any other name gets `.exit`)."""
    stem = pid_path[: -len(PID_SUFFIX)] if pid_path.endswith(PID_SUFFIX) else pid_path
    return stem + EXIT_SUFFIX


def _read_text(path: str, limit: int = 4096) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def read_pid(pid_path: str) -> int | None:
    """The pid in a pid file, or None when it is missing, garbled, or could never be a launched command's (init,
    a process-group number, this very process)."""
    text = _read_text(pid_path)
    try:
        pid = int((text or "").split()[0])
    except (IndexError, ValueError):
        return None
    return pid if pid > 1 and pid != os.getpid() else None


def read_exit_code(path: str) -> int | None:
    """The exit code recorded in an exit file, or None."""
    try:
        return int((_read_text(path) or "").strip())
    except ValueError:
        return None


def _write_atomic(path: str, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: a reader never sees half of it."""
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


# ---- is it alive? ------------------------------------------------------------------------------------------


def _stat_fields(pid: str) -> list[str] | None:
    """/proc/PID/stat after the command name (which may itself contain ") "): [state, ppid, pgrp, ...]."""
    text = _read_text(f"/proc/{pid}/stat", 1024)
    if text is None or ")" not in text:
        return None
    return text.rsplit(")", 1)[1].split()


def _has_proc() -> bool:
    return os.path.exists("/proc/self/stat")


def process_alive(pid: int) -> bool:
    """True if `pid` runs; a zombie counts as dead."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, not ours
    fields = _stat_fields(str(pid)) if _has_proc() else None
    return fields is None or fields[0] not in ("Z", "X")  # no /proc (macOS): kill(0) is all we know


def group_alive(pid: int) -> bool:
    """True while `pid` or any member of the process group it leads runs (zombies do not count). A leader that
    exited leaves its group behind (a data-loader worker, a shell's child): that still counts as running."""
    if process_alive(pid):
        return True
    if not _has_proc():
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    wanted = str(pid)
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(name)
            if fields is not None and len(fields) > 2 and fields[2] == wanted and fields[0] not in ("Z", "X"):
                return True
    return False


def running(pid_path: str) -> bool:
    """The launched command runs: no exit code recorded yet, and its group is alive."""
    if os.path.exists(exit_path(pid_path)):
        return False
    pid = read_pid(pid_path)
    return pid is not None and group_alive(pid)


# ---- stopping ----------------------------------------------------------------------------------------------


def _leads_own_group(pid: int) -> bool:
    """A process group numbered `pid` exists and is not ours: killing it cannot take this process (or the shell
    that started it) down."""
    if pid == os.getpgrp():
        return False
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def terminate(
    pid: int, grace_s: float, *, leader_first: bool = False, notify: Callable[..., Any] | None = None
) -> int | None:
    """SIGTERM, wait up to `grace_s`, then SIGKILL. Returns 143 when SIGTERM sufficed, 137 when SIGKILL was
    needed, None when nothing ran.

    leader_first=False: SIGTERM the whole group, wait for the group, SIGKILL what is left of it.
    leader_first=True (the runner's checkpoint protocol): SIGTERM only `pid` ("save a checkpoint and exit now";
    its data-loader workers must live until it has), wait for `pid`, then SIGKILL the group to sweep whatever
    remains. Either way the group is signalled only when `pid` leads a group of its own; otherwise just `pid`.
    `notify(what, **fields)` hears "sigterm" and "sigkill" (the watchdog logs them)."""
    note = notify or (lambda *_args, **_fields: None)
    if not group_alive(pid):
        return None
    group = _leads_own_group(pid)
    try:
        if group and not leader_first:
            os.killpg(pid, signal.SIGTERM)
        else:
            os.kill(pid, signal.SIGTERM)
        note("sigterm", pid=pid, grace_s=grace_s)
    except OSError as exc:
        note("sigterm", pid=pid, error=repr(exc))

    def waiting() -> bool:
        return process_alive(pid) if leader_first or not group else group_alive(pid)

    end = time.monotonic() + grace_s
    while waiting() and time.monotonic() < end:
        time.sleep(0.1)
    code = 137 if waiting() else 143
    if not leader_first and code == 143:
        return code  # nothing left to sweep
    try:
        if group:
            os.killpg(pid, signal.SIGKILL)  # data-loader workers, shells, stuck children
        elif process_alive(pid):
            os.kill(pid, signal.SIGKILL)
        note("sigkill", pid=pid, group=group)
    except ProcessLookupError:
        note("sigkill", pid=pid, group=group, note="already gone")
    except OSError as exc:
        note("sigkill", pid=pid, error=repr(exc))
    return code


def stop(pid_path: str, grace_s: float = 10.0) -> bool:
    """Stop a launched command's group (see `terminate`) and make sure an exit code is recorded: the monitor's
    own when it writes one in time, else 143/137. False (and nothing touched) when nothing ran."""
    pid = read_pid(pid_path)
    code = terminate(pid, grace_s) if pid is not None else None
    if code is None:
        return False
    done = exit_path(pid_path)
    end = time.monotonic() + RECORD_WAIT_S
    while not os.path.exists(done) and time.monotonic() < end:
        time.sleep(0.05)
    if not os.path.exists(done):  # the monitor is gone (killed with the box's other processes, or never ran)
        _write_atomic(done, f"{code}\n")
    return True


# ---- launching ---------------------------------------------------------------------------------------------


#: what a shell prints when its child dies by a signal: the words a user searches for ("Killed" = the kernel's
#: out-of-memory killer, or a SIGKILL)
_SIGNAL_WORDS = {
    int(signal.SIGKILL): "Killed",
    int(signal.SIGSEGV): "Segmentation fault",
    int(signal.SIGABRT): "Aborted",
    int(signal.SIGBUS): "Bus error",
    int(signal.SIGTERM): "Terminated",
    int(signal.SIGILL): "Illegal instruction",
    int(signal.SIGFPE): "Floating point exception",
}


def _note_signal(status: int, err: str) -> None:
    """Append the shell's words for a death by signal to the command's stderr file (best effort)."""
    if not os.WIFSIGNALED(status):
        return
    number = os.WTERMSIG(status)
    words = _SIGNAL_WORDS.get(number, f"Killed by signal {number}")
    with contextlib.suppress(OSError), open(err, "a", encoding="utf-8") as handle:
        handle.write(f"{words} (signal {number}, exit {128 + number})\n")


def _exit_code(status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal that ended it."""
    if os.WIFSIGNALED(status):
        return 128 + os.WTERMSIG(status)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 255


def _close_fds(keep: tuple[int, ...]) -> None:
    """Close every descriptor above stderr except `keep`: nothing of the caller (an SSH channel) stays open."""
    for folder in ("/proc/self/fd", "/dev/fd"):
        try:
            fds = [int(name) for name in os.listdir(folder)]
            break
        except (OSError, ValueError):
            continue
    else:
        fds = list(range(3, 256))
    for fd in fds:
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _redirect(stdin: int, stdout: int, stderr: int) -> None:
    for source, target in ((stdin, 0), (stdout, 1), (stderr, 2)):
        if source != target:
            os.dup2(source, target)


def _exec_child(argv: list[str], out: str, err: str | None, append: bool, cwd: str, status_w: int) -> None:
    """The launched command: its own session and group, files for its output, then exec. Never returns."""
    stage = "setup"
    try:
        os.setsid()
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)  # python ignores SIGPIPE/SIGXFSZ, and ignored stays ignored in exec
        signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as nohup did: no hang-up ends it
        flags = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else os.O_TRUNC)
        stdout = os.open(out, flags, 0o644)
        stderr = stdout if err is None else os.open(err, flags, 0o644)
        _redirect(os.open(os.devnull, os.O_RDONLY), stdout, stderr)
        os.chdir(cwd)
        stage = "exec"
        os.execvp(argv[0], argv)
    except OSError as exc:
        # what a shell would say; it lands in the command's stderr file and goes back to the launcher
        missing = stage == "exec" and exc.errno == errno.ENOENT
        what = argv[0] if stage == "exec" else (exc.filename or stage)
        message = f"{what}: {'not found' if missing else (exc.strerror or repr(exc))}\n"
        for fd in (2, status_w):
            with contextlib.suppress(OSError):
                os.write(fd, message.encode("utf-8", "replace"))
        os._exit(127 if missing else 126)
    except BaseException:
        os._exit(126)


def _monitor(argv: list[str], pid_path: str, out: str, err: str | None, append: bool, cwd: str, report: int):
    """Start the command, record its pid, tell the launcher, wait for it, record its exit code. Never returns."""
    try:
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        os.chdir("/")
        _close_fds((report,))
        status_r, status_w = os.pipe()  # close-on-exec: EOF without a word means the exec worked
        child = os.fork()
        if child == 0:
            os.close(status_r)
            os.close(report)
            _exec_child(argv, out, err, append, cwd, status_w)
        os.close(status_w)
        failure = b""
        while True:
            chunk = os.read(status_r, 4096)
            if not chunk:
                break
            failure += chunk
        os.close(status_r)
        if failure:
            code = _exit_code(os.waitpid(child, 0)[1])
            _write_atomic(exit_path(pid_path), f"{code}\n")
            os.write(report, json.dumps({"exited": code, "error": failure.decode("utf-8", "replace").strip()}).encode())
            os._exit(0)
        _write_atomic(pid_path, f"{child}\n")
        os.write(report, json.dumps({"started": child}).encode())
        os.close(report)
        status = os.waitpid(child, 0)[1]
        _note_signal(status, err if err is not None else out)
        _write_atomic(exit_path(pid_path), f"{_exit_code(status)}\n")
    finally:
        os._exit(0)


def launch(
    argv: list[str],
    pid_path: str,
    stdout: str,
    stderr: str | None = None,
    *,
    append: bool = False,
    cwd: str | None = None,
    wait_s: float = 30.0,
) -> dict[str, Any]:
    """Start `argv` detached (see the notes at the top); returns {"started": pid} or {"exited": code, "error":
    text}, or {"error": text} when no word came back within `wait_s`. Paths are relative to the current folder;
    the command runs in `cwd` (default: here) with this process's environment, and its output goes to `stdout`
    (and `stderr`, else the same file), appended with append=True, else truncated."""
    if not argv:
        raise ValueError("nothing to launch")
    pid_path, stdout = os.path.abspath(pid_path), os.path.abspath(stdout)
    stderr = os.path.abspath(stderr) if stderr else None
    cwd = os.path.abspath(cwd) if cwd else os.getcwd()  # the monitor itself moves to / (it holds no folder)
    for path in (pid_path, stdout, stderr):
        if path:
            os.makedirs(os.path.dirname(path), exist_ok=True)
    for path in (pid_path, exit_path(pid_path)):
        if os.path.exists(path):
            os.unlink(path)
    report_r, report_w = os.pipe()
    first = os.fork()
    if first == 0:  # a throwaway middle process: its own session, then the monitor, then gone
        try:
            os.close(report_r)
            os.setsid()
            null = os.open(os.devnull, os.O_RDWR)
            _redirect(null, null, null)
            if os.fork() == 0:
                _monitor(list(argv), pid_path, stdout, stderr, append, cwd, report_w)
        finally:
            os._exit(0)
    os.close(report_w)
    os.waitpid(first, 0)
    data, end = b"", time.monotonic() + wait_s
    while time.monotonic() < end:
        ready = select.select([report_r], [], [], max(0.0, end - time.monotonic()))[0]
        chunk = os.read(report_r, 65536) if ready else b""
        if not chunk:
            break
        data += chunk
    os.close(report_r)
    try:
        answer = json.loads(data.decode("utf-8", "replace"))
    except ValueError:
        answer = None
    return answer if isinstance(answer, dict) else {"error": f"no word from the launched command in {wait_s:g} s"}


def main(args: list[str] | None = None) -> int:
    """The command line:

    launch --pid-file P --stdout F [--stderr F] [--append] [--cwd D] [--wait S] -- ARGV...
        start ARGV detached; print one JSON line, {"started": PID}, or {"exited": CODE, "error": TEXT} when it could
        not even start (not found: 127, like a shell); exit 1 when the launch itself failed
    running PID_FILE
        exit 0 while the command runs, 1 otherwise
    stop PID_FILE [--grace S]
        SIGTERM the group, SIGKILL what is left after S seconds (10), make sure an exit code is recorded (the
        command's own, else 143 or 137); print "killed", or "gone" when nothing ran
    """
    args = list(sys.argv[1:] if args is None else args)
    command = args[: args.index("--")] if "--" in args else args
    argv = args[len(command) + 1 :]
    parser = argparse.ArgumentParser(prog="boxproc", description="gpurun's box-side process helper")
    sub = parser.add_subparsers(dest="what", required=True)
    start = sub.add_parser("launch")
    start.add_argument("--pid-file", required=True)
    start.add_argument("--stdout", required=True)
    start.add_argument("--stderr")
    start.add_argument("--append", action="store_true")
    start.add_argument("--cwd")
    start.add_argument("--wait", type=float, default=30.0)
    sub.add_parser("running").add_argument("pid_file")
    halt = sub.add_parser("stop")
    halt.add_argument("pid_file")
    halt.add_argument("--grace", type=float, default=10.0)
    opts = parser.parse_args(command)
    if opts.what == "running":
        return 0 if running(opts.pid_file) else 1
    if opts.what == "stop":
        sys.stdout.write("killed\n" if stop(opts.pid_file, opts.grace) else "gone\n")
        return 0
    if not argv:
        parser.error("launch: the command goes after --")
    answer = launch(argv, opts.pid_file, opts.stdout, opts.stderr, append=opts.append, cwd=opts.cwd, wait_s=opts.wait)
    sys.stdout.write(json.dumps(answer) + "\n")
    return 0 if "started" in answer or "exited" in answer else 1


if __name__ == "__main__":
    sys.exit(main())
