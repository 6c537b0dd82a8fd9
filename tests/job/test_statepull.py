"""Pulling the runner's resumable state from the machine: a consistent snapshot verified by hash and swapped in
whole, what a hostile host reports about it refused, and the state pushed to a new machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpurun.errors import SyncError, UntrustedReportError
from gpurun.job import machine, statepull
from gpurun.job.context import RunContext
from gpurun.job.options import JobOptions
from gpurun.job.record import RunRecord
from gpurun.job.view import SilentView
from gpurun.journal import Journal
from gpurun.models import GpuSpec, Offer, Workload
from gpurun.pricing import estimate
from gpurun.remote.local_transport import LocalTransport

SHA = "ab" * 32
GOOD = {name: [10, SHA] for name in statepull.STATE_FILES}


def write_state(folder: Path, step: int, payload: bytes = b"w") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in statepull.STATE_FILES:
        (folder / name).write_bytes(payload * 10 + name.encode())
    (folder / "progress.json").write_text(json.dumps({"step": step, "epoch": 1}))


async def box_context(tmp_path: Path) -> RunContext:
    """A run whose "machine" is a folder here (the local transport), with its own journal and run folder."""
    journal = Journal.open(tmp_path / "journal.sqlite3")
    offer = Offer(provider="vast", offer_id="1", gpu=GpuSpec("RTX 4090", 1, 24.0), price_per_hour=0.3)
    record = RunRecord(run_id="r01kf3m9x2c7qzab", output_dir=tmp_path / "local",
                       estimate=estimate(Workload(family="sd15", images=2, repeats=1, epochs=1), offer))  # fmt: skip
    journal.record_intent(
        record.run_id, provider="vast", offer_id="1", gpu="RTX 4090", quoted_price=0.3, budget=None, workload={},
        estimate={}, output_dir=record.output_dir, config_toml="", label="gpurun-" + record.run_id,
    )  # fmt: skip
    ctx = RunContext(record, SilentView(), journal, JobOptions())
    ctx.transport = LocalTransport(tmp_path / "box")
    (tmp_path / "box").mkdir(exist_ok=True)
    ctx.layout = await machine.make_layout(ctx.transport, record.run_id, str(tmp_path / "box"))
    return ctx


async def test_no_state_yet_pulls_nothing(tmp_path: Path) -> None:
    ctx = await box_context(tmp_path)
    assert await statepull.pull_state(ctx) is None
    assert ctx.record.state_step is None and not (ctx.out_dir / "state").exists()


async def test_each_pull_replaces_the_local_state_whole_and_records_its_step(tmp_path: Path) -> None:
    ctx = await box_context(tmp_path)
    assert ctx.layout is not None
    remote = Path(ctx.layout.path("out", "state"))
    write_state(remote, 5)
    assert await statepull.pull_state(ctx) == 5
    local = ctx.out_dir / "state"
    assert sorted(p.name for p in local.iterdir()) == sorted(statepull.STATE_FILES)
    assert (local / "lora.safetensors").read_bytes() == (remote / "lora.safetensors").read_bytes()
    assert RunRecord.load(ctx.run_id).state_step == 5  # saved: `gpurun resume` reads it from another process
    # the runner swaps a new state in: the next pull brings it, and nothing of the old one is left beside it
    write_state(remote, 10, b"x")
    assert await statepull.pull_state(ctx) == 10
    assert (local / "lora.safetensors").read_bytes().startswith(b"xxxxx")
    assert sorted(p.name for p in ctx.out_dir.iterdir()) == ["state"]
    assert statepull.has_local_state(ctx.out_dir, ctx.record.state_files)
    # and it goes to a new machine's out/state, where the runner's --resume reads it
    ctx.transport = LocalTransport(tmp_path / "box2")
    (tmp_path / "box2").mkdir(exist_ok=True)
    ctx.layout = await machine.make_layout(ctx.transport, ctx.run_id, str(tmp_path / "box2"))
    await statepull.push_state(ctx)
    pushed = Path(ctx.layout.path("out", "state"))
    assert json.loads((pushed / "progress.json").read_text())["step"] == 10


async def test_a_state_changed_in_transit_is_not_swapped_in(tmp_path: Path, monkeypatch) -> None:
    ctx = await box_context(tmp_path)
    assert ctx.layout is not None
    write_state(Path(ctx.layout.path("out", "state")), 5)
    await statepull.pull_state(ctx)
    before = (ctx.out_dir / "state" / "lora.safetensors").read_bytes()
    write_state(Path(ctx.layout.path("out", "state")), 10, b"y")
    real = statepull.fetch_verified

    async def tampered(transport, remote, local, digest, **kw):  # the host changes a file after hashing it
        Path(remote).write_bytes(b"evil")
        return await real(transport, remote, local, digest, **kw)

    monkeypatch.setattr(statepull, "fetch_verified", tampered)
    with pytest.raises(SyncError, match="checksum mismatch"):
        await statepull.pull_state(ctx)
    assert (ctx.out_dir / "state" / "lora.safetensors").read_bytes() == before and ctx.record.state_step == 5


@pytest.mark.parametrize(
    ("listing", "needle"),
    [
        ({**GOOD, "../../.bashrc": [10, SHA]}, "unexpected file '../../.bashrc'"),
        ({**GOOD, "evil.pt": [10, SHA]}, "unexpected file 'evil.pt'"),
        ({k: v for k, v in GOOD.items() if k != "rng.pt"}, "rng.pt missing"),
        ({**GOOD, "optimizer.pt": [2**40, SHA]}, "impossible size for optimizer.pt"),
        ({**GOOD, "progress.json": [2**30, SHA]}, "impossible size for progress.json"),
        ({**GOOD, "lora.safetensors": [-1, SHA]}, "impossible size"),
        ({**GOOD, "lora.safetensors": [True, SHA]}, "impossible size"),
        ({**GOOD, "lora.safetensors": [10, "not-a-hash"]}, "malformed sha256"),
        ({**GOOD, "rng.pt": "10"}, "malformed entry for rng.pt"),
        (["lora.safetensors"], "not a listing"),
    ],
)
def test_a_hostile_listing_is_refused(listing: object, needle: str) -> None:
    with pytest.raises(UntrustedReportError, match=r"will not pull|malformed sha256") as caught:
        statepull.check_listing(listing, where="box")
    assert needle in caught.value.message


async def test_a_hostile_progress_file_is_refused_and_nothing_is_swapped_in(tmp_path: Path) -> None:
    ctx = await box_context(tmp_path)
    assert ctx.layout is not None
    remote = Path(ctx.layout.path("out", "state"))
    write_state(remote, 5)
    (remote / "progress.json").write_text('{"step": "../../x"}')
    with pytest.raises(UntrustedReportError, match="no step count"):
        await statepull.pull_state(ctx)
    assert not (ctx.out_dir / "state").exists() and ctx.record.state_step is None


def test_push_needs_a_pulled_state(tmp_path: Path) -> None:
    assert not statepull.has_local_state(tmp_path, {})
    assert not statepull.has_local_state(tmp_path, {"lora.safetensors": SHA})
