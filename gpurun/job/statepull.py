"""The runner's resumable state (LoRA weights, optimizer, progress, RNG), pulled from the machine after every
checkpoint into `<run folder>/state/`, and pushed to a new machine when the run continues there.

The runner swaps a whole new state folder in with one rename, so a snapshot taken by hard-linking every file from
one open handle on the folder is one consistent state. What the machine reports about it (names, sizes, hashes,
the step in progress.json) is untrusted: only the runner's four file names, bounded sizes and well-formed hashes
are accepted, each file is verified by its sha256, and the local copy replaces the previous one only when whole.
"""

from __future__ import annotations

import asyncio
import json
import shlex
import shutil
import time
from pathlib import Path
from typing import Any

from gpurun.errors import SyncError, UntrustedReportError
from gpurun.job import untrusted
from gpurun.job.context import RunContext
from gpurun.remote.sync import fetch_verified, push

#: what `gpurun.runner.state.save_state` writes, and nothing else
STATE_FILES = ("lora.safetensors", "optimizer.pt", "progress.json", "rng.pt")
#: the optimizer of a large SDXL LoRA (two Adam moments in fp32) stays well under this
MAX_STATE_FILE_BYTES = 16 * 2**30
MAX_PROGRESS_BYTES = 1 << 20
#: the local copy, in the run's folder
LOCAL_STATE = "state"
#: where the snapshot is taken on the machine (in the run folder, outside out/, so on the same file system)
SNAPSHOT = ".state-pull"

# Runs as `python3 -c SCRIPT STATE_DIR SNAPSHOT_DIR`: link every file of one state folder into the snapshot
# (copy where links are refused), retrying when the runner swapped a new state in meanwhile; prints
# {name: [size, sha256]}, or {} when there is no state yet.
_SNAPSHOT_SCRIPT = r"""
import hashlib, json, os, shutil, sys, time
src, snap = sys.argv[1], sys.argv[2]
for attempt in range(50):
    try:
        fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    except FileNotFoundError:
        print("{}"); sys.exit(0)
    shutil.rmtree(snap, ignore_errors=True); os.makedirs(snap)
    try:
        for name in os.listdir(fd):
            if name.startswith("."):
                continue
            try:
                os.link(name, os.path.join(snap, name), src_dir_fd=fd)
            except FileNotFoundError:
                raise
            except OSError:
                with open(name, "rb", opener=lambda p, f: os.open(p, f, dir_fd=fd)) as a, \
                        open(os.path.join(snap, name), "wb") as b:
                    shutil.copyfileobj(a, b)
        break
    except FileNotFoundError:
        time.sleep(0.1)
    finally:
        os.close(fd)
found = {}
for name in os.listdir(snap):
    path = os.path.join(snap, name); h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""): h.update(chunk)
    found[name] = [os.path.getsize(path), h.hexdigest()]
print(json.dumps(found))
"""


def check_listing(listing: Any, *, where: str) -> dict[str, tuple[int, str]]:
    """The machine's report of its state folder, accepted only as exactly the runner's four files with bounded
    sizes and well-formed hashes; anything else is an UntrustedReportError. {} when there is no state yet."""

    def refuse(why: str) -> UntrustedReportError:
        return UntrustedReportError(
            f"the machine reported a training state gpurun will not pull: {why}",
            where=where,
            hint="a compromised or broken host; nothing outside the run folder was touched",
        )

    if not isinstance(listing, dict):
        raise refuse("not a listing")
    if not listing:
        return {}
    names = set(listing)
    if names != set(STATE_FILES):
        odd = sorted(repr(n)[:80] for n in names - set(STATE_FILES))
        missing = sorted(set(STATE_FILES) - names)
        raise refuse(", ".join([*(f"unexpected file {n}" for n in odd), *(f"{n} missing" for n in missing)]))
    checked: dict[str, tuple[int, str]] = {}
    for name in STATE_FILES:
        entry = listing[name]
        if not isinstance(entry, list) or len(entry) != 2:
            raise refuse(f"a malformed entry for {name}")
        size, digest = entry
        limit = MAX_PROGRESS_BYTES if name == "progress.json" else MAX_STATE_FILE_BYTES
        if isinstance(size, bool) or not isinstance(size, int) or not 0 < size <= limit:
            raise refuse(f"an impossible size for {name}: {size!r}")
        checked[name] = (size, untrusted.sha256_hex(digest, where=where))
    return checked


def state_step(progress_file: Path, *, where: str) -> int:
    """The optimizer step a pulled state resumes from (its progress.json, untrusted)."""
    try:
        data = json.loads(progress_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UntrustedReportError(f"the pulled progress.json is not JSON: {exc}", where=where) from None
    step = data.get("step") if isinstance(data, dict) else None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise UntrustedReportError(f"the pulled progress.json has no step count: {step!r}", where=where)
    return step


async def pull_state(ctx: RunContext) -> int | None:
    """Pull the machine's current state into `<run folder>/state/` (verified, swapped in whole) and record it.
    Returns its step, or None when the runner has saved none yet."""
    assert ctx.transport is not None and ctx.layout is not None
    async with ctx.state_lock:
        transport, layout = ctx.transport, ctx.layout
        where = transport.where
        snapshot = layout.path(SNAPSHOT)
        args = " ".join(shlex.quote(a) for a in (_SNAPSHOT_SCRIPT, layout.path("out", LOCAL_STATE), snapshot))
        result = await transport.run(f"python3 -c {args}", check=False)
        if result.rc != 0:
            raise SyncError(f"could not snapshot the training state: {result.stderr.strip()[-300:]}", where=where)
        try:
            listing = json.loads(result.stdout or "{}")
        except ValueError:
            raise UntrustedReportError("the state listing is not JSON", where=where) from None
        files = check_listing(listing, where=where)
        if not files:
            return None
        if {name: digest for name, (_, digest) in files.items()} == ctx.record.state_files:
            return ctx.record.state_step  # the same state as last time
        local = ctx.out_dir / LOCAL_STATE
        fresh = ctx.out_dir / f".{LOCAL_STATE}.new"
        shutil.rmtree(fresh, ignore_errors=True)
        fresh.mkdir(parents=True)
        for name, (size, digest) in files.items():
            await fetch_verified(transport, f"{snapshot}/{name}", fresh / name, digest, size=size,
                                 max_bytes=size)  # fmt: skip
        step = state_step(fresh / "progress.json", where=where)
        old = ctx.out_dir / f".{LOCAL_STATE}.old"
        shutil.rmtree(old, ignore_errors=True)
        if local.exists():
            local.replace(old)
        fresh.replace(local)
        shutil.rmtree(old, ignore_errors=True)
        record = ctx.record
        record.state_step, record.state_at = step, time.time()
        record.state_files = {name: digest for name, (_, digest) in files.items()}
        if record.machines:
            record.machines[-1].state_step = step
        ctx.save()
        ctx.journal.phase(ctx.run_id, "training", f"state at step {step} pulled")
        return step


def schedule_pull(ctx: RunContext) -> None:
    """Pull the state in the background (with the checkpoint fetches: `drain_fetches` waits for it)."""
    ctx.fetches.append(asyncio.create_task(_pull(ctx)))


async def _pull(ctx: RunContext) -> None:
    await pull_state(ctx)


def has_local_state(out_dir: Path, files: dict[str, str]) -> bool:
    """Whether the run folder holds the state the record names (every file present)."""
    local = out_dir / LOCAL_STATE
    return bool(files) and all((local / name).is_file() for name in files)


async def push_state(ctx: RunContext) -> None:
    """Send the last pulled state to the (new) machine's `out/state/`, where the runner's --resume reads it."""
    assert ctx.transport is not None and ctx.layout is not None
    local = ctx.out_dir / LOCAL_STATE
    if not has_local_state(ctx.out_dir, ctx.record.state_files):
        raise SyncError("no pulled training state to continue from", where=str(local))
    await push(ctx.transport, local, ctx.layout.path("out", LOCAL_STATE))
