"""The orchestration's own knobs (timeouts, lease timing); each can be shortened through a GPURUN_<NAME> variable."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class JobOptions:
    """Knobs of the orchestration itself; the timings can be shortened through GPURUN_<NAME> env vars."""

    detach: bool = False
    lease_interval_s: float = 60.0
    lease_ttl_s: float = 300.0
    watchdog_poll_s: float = 15.0
    ready_timeout_s: float = 900.0
    poll_s: float = 5.0
    connect_timeout_s: float = 300.0
    bootstrap_timeout_s: float = 3600.0
    sync_timeout_s: float = 3600.0
    fetch_timeout_s: float = 1800.0
    #: stop the runner this long before the watchdog's hard deadline, so its last checkpoint reaches us
    client_deadline_margin_s: float = 90.0
    #: SIGTERM → SIGKILL grace for the runner (it saves a checkpoint in between)
    runner_stop_grace_s: float = 60.0
    #: how long a watchdog armed at container start waits for this client's first lease before it destroys the
    #: machine: covering the wait for SSH (connect_timeout_s) and the adoption, nothing more
    boot_lease_s: float = 600.0
    #: when the provider refuses every destroy, the watchdog shuts the machine down (`shutdown -h now`). Only for
    #: machines that are rented whole; GPURUN_WATCHDOG_FALLBACK=0 turns it off (the tests' "instances" are users
    #: on the test machine)
    watchdog_fallback: bool = True
    #: while training, how often the provider is asked whether the machine still runs: an interruptible one can
    #: be taken (Vast stops an outbid instance, RunPod exits a spot pod), and the run continues on another
    machine_check_s: float = 30.0

    @classmethod
    def from_env(cls, **overrides: Any) -> JobOptions:
        values: dict[str, Any] = {}
        for name, spec in cls.__dataclass_fields__.items():
            env = os.environ.get(f"GPURUN_{name.upper()}")
            if not env:
                continue
            if spec.type in ("float", float):
                values[name] = float(env)
            elif spec.type in ("bool", bool) and name != "detach":
                values[name] = env.strip().lower() not in ("0", "false", "no", "off")
        values.update(overrides)
        return cls(**values)


class Detached(Exception):
    """The user detached: the run goes on under the watchdog."""
