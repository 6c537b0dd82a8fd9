"""Seconds a user pays for without training, on the local-SSH setup (real OpenSSH sshd on 127.0.0.1).

    python bench/remote_latency.py [--repeat 5] [--fetch-mb 40] [--with-bootstrap]

1. "SSH ready" → first event: connect (per-run key, host key pinned) + mkdir + rsync the gpurun bundle +
   start the runner detached + follow until its first event line arrives. With --with-bootstrap the warm
   bootstrap.sh check is included too (it imports torch once to report CUDA).
2. fetch_verified of a random file (default 40 MB) over the same sshd, by rsync and by SFTP, plus the local
   transport for comparison.
3. one command's round trip on an open connection: most startup steps are one each, and each pays the
   account's shell start-up (bash reads ~/.bashrc even for `ssh host cmd`).

Needs sshd, ssh and rsync (like the sshd tests). Prints one JSON document.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gpurun.models import SshEndpoint  # noqa: E402
from gpurun.remote import sync  # noqa: E402
from gpurun.remote.bootstrap import run_bootstrap  # noqa: E402
from gpurun.remote.follow import EventFollower  # noqa: E402
from gpurun.remote.keys import ensure_run_keys  # noqa: E402
from gpurun.remote.local_transport import LocalTransport  # noqa: E402
from gpurun.remote.session import connect  # noqa: E402
from tests.support.sshd import start_sshd  # noqa: E402

# what the runner does first: import the event protocol from the bundle and announce itself
FIRST_EVENT = "from gpurun.events import Phase, emit; emit(Phase(name='loading', detail='bench'))"


async def startup_once(server, root: Path, run_id: str, with_bootstrap: bool) -> dict[str, float]:
    keys = ensure_run_keys(run_id)
    server.authorize(keys.public_key_text())
    endpoint = SshEndpoint(server.host, server.port, server.user)
    work = root / run_id / "work"
    marks: dict[str, float] = {}
    t0 = time.perf_counter()
    session = await connect(endpoint, keys.private_key, keys.known_hosts, deadline=time.monotonic() + 60)
    marks["connect"] = time.perf_counter() - t0
    await session.makedirs(str(work))
    marks["mkdir"] = time.perf_counter() - t0
    if with_bootstrap:
        await run_bootstrap(session, home=str(work / "home"), env={"GPURUN_PYTHON": sys.executable})
        marks["bootstrap"] = time.perf_counter() - t0
    stats = await sync.push(session, REPO / "gpurun", str(work / "bundle" / "gpurun"))
    marks["push_bundle"] = time.perf_counter() - t0
    events, pid = str(work / "run" / "events.jsonl"), str(work / "run" / "runner.pid")
    cmd = f"{shlex.quote(sys.executable)} -c {shlex.quote(FIRST_EVENT)}; sleep 5"
    await session.start_detached(["sh", "-c", cmd], pid, stdout=events, env={"PYTHONPATH": str(work / "bundle")})
    marks["start_detached"] = time.perf_counter() - t0
    async for _item in EventFollower(session, events, pid, python=sys.executable, poll_interval=0.05):
        break
    marks["first_event"] = time.perf_counter() - t0
    await session.kill(pid, grace_s=2)
    # one command's round trip on an open connection (channel + the account's shell start-up)
    started = time.perf_counter()
    await session.run("true")
    marks["one_command_rtt"] = time.perf_counter() - started
    await session.close()
    marks["bundle_files"] = stats.files_total
    marks["bundle_bytes"] = stats.total_size
    return marks


async def fetch_times(server, root: Path, size_mb: int, repeat: int) -> dict[str, list[float]]:
    keys = ensure_run_keys("bench-fetch")
    server.authorize(keys.public_key_text())
    session = await connect(SshEndpoint(server.host, server.port, server.user), keys.private_key, keys.known_hosts)
    remote = root / "instance" / "lora.safetensors"
    remote.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size_mb * 1_000_000)
    remote.write_bytes(data)
    digest = hashlib.sha256(data).hexdigest()
    results: dict[str, list[float]] = {"ssh+rsync": [], "ssh+sftp": [], "local+rsync": [], "local+copy": []}
    local = LocalTransport(root / "local-home")
    for _ in range(repeat):
        for label, transport, method in (
            ("ssh+rsync", session, "rsync"),
            ("ssh+sftp", session, "sftp"),
            ("local+rsync", local, "rsync"),
            ("local+copy", local, "sftp"),
        ):
            target = root / "out" / label / "lora.safetensors"
            target.unlink(missing_ok=True)
            started = time.perf_counter()
            await sync.fetch_verified(transport, str(remote), target, digest, size=len(data), method=method)  # type: ignore[arg-type]
            results[label].append(time.perf_counter() - started)
    await session.close()
    return results


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--fetch-mb", type=int, default=40)
    parser.add_argument("--with-bootstrap", action="store_true")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="gpurun-bench-"))
    os.environ["GPURUN_STATE_DIR"] = str(root / "state")
    proc, server = start_sshd(root / "sshd")
    try:
        runs = [await startup_once(server, root, f"bench-{i}", args.with_bootstrap) for i in range(args.repeat)]
        fetch = await fetch_times(server, root, args.fetch_mb, args.repeat)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        subprocess.run(["rm", "-rf", str(root)], check=False)
    report = {
        "startup_s": {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]},
        "startup_first_event_all_s": [round(r["first_event"], 3) for r in runs],
        "fetch_verified_s": {
            label: {"median": round(statistics.median(v), 3), "all": [round(x, 3) for x in v]}
            for label, v in fetch.items()
        },
        "fetch_mb": args.fetch_mb,
        "repeat": args.repeat,
        "with_bootstrap": args.with_bootstrap,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
