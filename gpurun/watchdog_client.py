"""The client's side of the on-instance watchdog: its config, and the shell lines that arm it, renew its lease and
launch the runner under its watch.

The watchdog itself is `gpurun/templates/watchdog.py` (stdlib only, shipped as-is); its module docstring is the
config schema and the rules. This module validates configs with that same parser, so there is one schema.
Every command here is a single POSIX-sh line meant for `session.run(...)` in the remote folder of the run.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from gpurun.errors import ConfigError

#: the file to upload next to the config
SOURCE = Path(__file__).resolve().parent / "templates" / "watchdog.py"
CONFIG_NAME = "watchdog.json"
LEASE_NAME = "lease"
PID_NAME = "runner.pid"
DONE_NAME = "runner.exit"
LOG_NAME = "watchdog.log"
STATUS_NAME = "watchdog.status.json"

# Runs the runner as the leader of its own session and process group (so the watchdog may kill the whole group),
# writes its pid first, then execs it: the pid in the file IS the runner, which is what receives SIGTERM.
_SESSION_EXEC = (
    "import os, sys\n"
    "try:\n    os.setsid()\nexcept OSError:\n    pass\n"
    "open(sys.argv[1], 'w').write(str(os.getpid()))\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


@functools.lru_cache(maxsize=1)
def template() -> ModuleType:
    """The watchdog template loaded as a module (it imports only the stdlib), for its parser and constants."""
    spec = importlib.util.spec_from_file_location("gpurun_watchdog_template", SOURCE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is being built
    spec.loader.exec_module(module)
    return module


def build_config(run_id: str, destroy: dict[str, Any], *, deadline: float | None, **options: Any) -> dict[str, Any]:
    """A watchdog config (see the template's docstring for `destroy` and the options), validated here first.

    `deadline` is on the instance's clock (see `gpurun.deadline.deadline_from_budget`). A `token_env` in `destroy`
    is checked on the instance, not here.
    """
    config: dict[str, Any] = {"version": template().CONFIG_VERSION, "run_id": run_id, "destroy": destroy}
    config["deadline"] = deadline
    config.update(options)
    # variables the instance provides (its token, its id) are checked there, not here
    environ = {
        str(destroy[key]): "set-on-the-instance"
        for key in ("token_env", "instance_id_env")
        if isinstance(destroy, dict) and destroy.get(key)
    }
    try:
        template().parse_config(config, ".", environ)
    except template().ConfigError as exc:
        raise ConfigError(str(exc), where="watchdog config", hint="see gpurun/templates/watchdog.py") from None
    return config


def config_json(config: dict[str, Any]) -> str:
    """The config file's text (it may hold the instance token: upload it 0600)."""
    return json.dumps(config, indent=2, sort_keys=True) + "\n"


def start_command(remote_dir: str, *, python: str = "python3") -> str:
    """Start the watchdog detached; it outlives the SSH session (it ignores SIGHUP and calls setsid itself)."""
    return (
        f"cd {shlex.quote(remote_dir)} && chmod 600 {CONFIG_NAME} && "
        f"nohup {shlex.quote(python)} watchdog.py --config {CONFIG_NAME} "
        f">/dev/null 2>>watchdog.stderr </dev/null &"
    )


def lease_command(remote_dir: str, run_id: str, seq: int) -> str:
    """Renew the lease: an atomic rewrite, so the watchdog never reads half a file (it would cope anyway)."""
    payload = json.dumps({"run_id": run_id, "seq": seq}, separators=(",", ":"))
    tmp = f"{LEASE_NAME}.tmp"
    return f"cd {shlex.quote(remote_dir)} && printf %s {shlex.quote(payload)} > {tmp} && mv -f {tmp} {LEASE_NAME}"


def runner_launch_command(
    remote_dir: str,
    argv: Sequence[str],
    *,
    python: str = "python3",
    events: str = "events.jsonl",
    stderr: str = "runner.stderr",
    env: dict[str, str] | None = None,
    done: str = DONE_NAME,
) -> str:
    """Launch `argv` detached as the watchdog expects: session leader, pid in runner.pid, exit code in `done`.

    stdout (the event stream) goes to `events`; SIGTERM to the pid means "checkpoint and exit" (the runner's job).
    """
    exports = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
    inner = (
        f"{exports}{shlex.quote(python)} -c {shlex.quote(_SESSION_EXEC)} {PID_NAME} "
        f"{' '.join(shlex.quote(a) for a in argv)} >{shlex.quote(events)} 2>{shlex.quote(stderr)} </dev/null; "
        f"echo $? > {shlex.quote(done)}.tmp && mv -f {shlex.quote(done)}.tmp {shlex.quote(done)}"
    )
    # the outer sh waits for the runner to write runner.exit; it is a plain child, not part of the runner's group
    return (
        f"cd {shlex.quote(remote_dir)} && rm -f {PID_NAME} {shlex.quote(done)} && "
        f"nohup sh -c {shlex.quote(inner)} >/dev/null 2>&1 </dev/null &"
    )


def parse_status(text: str) -> dict[str, Any] | None:
    """The watchdog's status file (lease age, runner state, grace end, deadline), or None if unreadable."""
    try:
        status = json.loads(text)
    except ValueError:
        return None
    return status if isinstance(status, dict) else None
