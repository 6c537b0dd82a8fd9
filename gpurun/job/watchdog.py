"""The client's side of the on-instance watchdog: its config, the shell lines that start it and renew its lease,
and arming (or adopting) it on the machine.

The watchdog itself is `gpurun/templates/watchdog.py` (stdlib only, shipped as-is, with the box process helper
`templates/boxproc.py` beside it); its module docstring is the config schema and the rules. This module validates
configs with that same parser, so there is one schema, and the destroy recipe in it comes from the provider
(`Provider.self_destroy`). Every command here is a single POSIX-sh line meant for `session.run(...)` in the remote
folder of the run.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import importlib.util
import json
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from gpurun.errors import ConfigError, RemoteError
from gpurun.job.machine import BoxLayout
from gpurun.remote.transport import BOXPROC_PATH, Transport

#: the file to upload next to the config
SOURCE = Path(__file__).resolve().parent.parent / "templates" / "watchdog.py"
#: the files the watchdog runs from, by their names in the run folder (it imports the helper from its own folder)
PROGRAM_FILES = {"watchdog.py": SOURCE, BOXPROC_PATH.name: BOXPROC_PATH}
CONFIG_NAME = "watchdog.json"
LEASE_NAME = "lease"
LOG_NAME = "watchdog.log"
STATUS_NAME = "watchdog.status.json"
#: how long a watchdog may take to show it runs (or reloaded) our config: its first credential check may wait
#: on a slow provider API
WATCHDOG_CONFIRM_S = 60.0


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

    `deadline` is on the instance's clock (see `gpurun.job.deadline.deadline_from_budget`). A `token_env` in `destroy`
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


def parse_status(text: str) -> dict[str, Any] | None:
    """The watchdog's status file (lease age, runner state, grace end, deadline), or None if unreadable."""
    try:
        status = json.loads(text)
    except ValueError:
        return None
    return status if isinstance(status, dict) else None


# ---- on the machine ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchdogArmed:
    """What the watchdog on the box says once it runs our config."""

    #: it was already running (armed at container start) and reloaded our config
    adopted: bool
    #: its check of the instance-scoped token: {"status": "ok" | "refused" | "unreachable" | "n/a", ...}
    credential: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)


async def arm_watchdog(
    transport: Transport,
    layout: BoxLayout,
    run_id: str,
    destroy: dict[str, Any],
    *,
    deadline: float | None,
    lease_ttl_s: float,
    artifact_grace_s: float,
    poll_s: float,
    fallback: bool = True,
    runner_pid_file: str | None = None,
) -> WatchdogArmed:
    """Arm the dead-man switch, or adopt the one the provider started at container start: write our config and
    a fresh lease, start it (a running one keeps its lock, and reloads the rewritten config instead), then wait
    until its status shows our config. `fallback=False` drops the shutdown fallback (tests, shared hosts).
    `runner_pid_file`: the runner it watches, relative to the run folder (a queue's job: jobs/NAME/runner.pid)."""
    options: dict[str, Any] = {"lease_ttl_s": lease_ttl_s, "artifact_grace_s": artifact_grace_s, "poll_s": poll_s}
    if not fallback:
        options["fallback_command"] = None
    config = build_config(
        run_id, destroy, deadline=deadline, runner_pid_file=runner_pid_file or Path(layout.pid).name, **options
    )
    text = config_json(config)
    before = await watchdog_status(transport, layout)
    await renew_lease(transport, layout, run_id, 0)
    for name, path in PROGRAM_FILES.items():
        await transport.put_text(layout.path(name), path.read_text(encoding="utf-8"), mode=0o755)
    await transport.put_text(layout.path(CONFIG_NAME), text, mode=0o600)
    await transport.run(start_command(layout.root, python="python3"))
    status = await _await_config(transport, layout, hashlib.sha256(text.encode()).hexdigest())
    if status is None and await _watchdog_alive(transport, layout):
        # a watchdog that holds the lock but does not take the config (too old, or stuck): replace it
        await stop_watchdog(transport, layout)
        await asyncio.sleep(1.0)
        await transport.run(start_command(layout.root, python="python3"))
        status = await _await_config(transport, layout, hashlib.sha256(text.encode()).hexdigest())
    if status is None:
        lines = await _tail(transport, layout.path("watchdog.stderr"))
        raise RemoteError(
            f"the watchdog did not start on the machine within {WATCHDOG_CONFIRM_S:.0f} s",
            where=transport.where,
            hint=("its stderr: " + " | ".join(lines[-3:])) if lines else "is python3 on the machine?",
        )
    adopted = before is not None and before.get("pid") == status.get("pid")
    return WatchdogArmed(adopted=adopted, credential=dict(status.get("credential") or {}), status=status)


async def watchdog_status(transport: Transport, layout: BoxLayout) -> dict[str, Any] | None:
    """The watchdog's status file (see the template's docstring), or None when there is none or it is garbled."""
    result = await transport.run(f"cat {shlex.quote(layout.path(STATUS_NAME))} 2>/dev/null", check=False)
    return parse_status(result.stdout) if result.rc == 0 and result.stdout.strip() else None


async def _await_config(transport: Transport, layout: BoxLayout, sha256: str) -> dict[str, Any] | None:
    end = time.monotonic() + WATCHDOG_CONFIRM_S
    while time.monotonic() < end:
        status = await watchdog_status(transport, layout)
        if status is not None and status.get("config_sha256") == sha256:
            return status
        await asyncio.sleep(0.25)
    return None


async def _watchdog_alive(transport: Transport, layout: BoxLayout) -> bool:
    lock = shlex.quote(layout.path("watchdog.pid"))
    result = await transport.run(f"[ -s {lock} ] && kill -0 $(cat {lock}) 2>/dev/null && echo alive", check=False)
    return result.stdout.strip() == "alive"


async def _tail(transport: Transport, path: str, lines: int = 20) -> list[str]:
    result = await transport.run(f"tail -n {lines} {shlex.quote(path)} 2>/dev/null", check=False)
    return [line for line in result.stdout.splitlines() if line.strip()]


async def renew_lease(transport: Transport, layout: BoxLayout, run_id: str, seq: int) -> None:
    await transport.run(lease_command(layout.root, run_id, seq))


async def stop_watchdog(transport: Transport, layout: BoxLayout) -> None:
    """Disarm (SIGTERM stops it between checks): for runs on machines gpurun does not destroy."""
    lock = shlex.quote(layout.path("watchdog.pid"))
    await transport.run(f"if [ -s {lock} ]; then kill $(cat {lock}) 2>/dev/null || true; fi", check=False)
