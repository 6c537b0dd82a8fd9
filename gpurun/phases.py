"""The phases of a run, named once: each is a journal phase, a line of the receipt, the estimate phases it
covers, and the `JobOptions` field that bounds it (`gpurun.job.context.RunContext.phase` enters one).

    boot      create the exact offer (failing over), wait until reachable   estimate: boot
    setup     connect, adopt the watchdog, ship gpurun, install the stack    estimate: install, model
    upload    sync the dataset                                                estimate: upload
    training  the runner, followed; checkpoints pulled as written             estimate: caching, training, samples
    fetch     every LoRA and grid, verified                                   estimate: fetch
    teardown  destroy, confirmed by polling

The estimate's `storage` and `bandwidth` lines are money without time: the receipt shows them apart.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RunPhase:
    name: str
    #: the cost model's phases (`gpurun.pricing.TIME_PHASES`) this phase is measured against
    covers: tuple[str, ...]
    #: the `JobOptions` field (seconds) that bounds the whole phase, or None (bounded inside: the ready timeout
    #: per offer, the budget's deadline, the destroy confirmation's timeout)
    deadline: str | None = None


BOOT = RunPhase("boot", ("boot",))
SETUP = RunPhase("setup", ("install", "model"), "bootstrap_timeout_s")
UPLOAD = RunPhase("upload", ("upload",), "sync_timeout_s")
TRAINING = RunPhase("training", ("caching", "training", "samples"))
FETCH = RunPhase("fetch", ("fetch",), "fetch_timeout_s")
TEARDOWN = RunPhase("teardown", ())

RUN_PHASES: tuple[RunPhase, ...] = (BOOT, SETUP, UPLOAD, TRAINING, FETCH, TEARDOWN)
