"""push / pull / fetch_verified over both transports and both methods (rsync, and the SFTP/copy fallback)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

import pytest

from gpurun.errors import ConfigError, SyncError
from gpurun.remote import sync
from gpurun.remote.excludes import DEFAULT_EXCLUDES, Excluder, plan_upload, upload_excludes
from gpurun.remote.rsync import TransferProgress, parse_progress, parse_stats
from gpurun.remote.session import SshSession
from gpurun.remote.transport import FileChannelUnavailable, Transport
from tests.support.remote_helpers import ssh_session, transport_fixture  # noqa: F401  (the fixture)
from tests.support.sshd import SshServer

METHODS = ["rsync", "sftp"]


def make_dataset(root: Path) -> dict[str, bytes]:
    """A kohya-style folder with the clutter real folders have; returns what should be uploaded."""
    wanted = {
        "10_sks dog/img1.png": os.urandom(3000),
        "10_sks dog/img1.txt": b"a photo of sks dog",
        "10_sks dog/sub/img2.jpg": os.urandom(5000),
        "notes.md": b"hello",
    }
    clutter = {
        ".git/HEAD": b"ref: refs/heads/main",
        ".ssh/id_ed25519": b"-----BEGIN OPENSSH PRIVATE KEY-----",  # hidden: never sent to a stranger's box
        ".env": b"HF_TOKEN=hf_secret",
        "10_sks dog/img1.png~": b"editor backup",
        "10_sks dog/.DS_Store": b"\0\0",
        "__pycache__/x.cpython-311.pyc": b"\0",
        "tool.pyc": b"\0",
        "raw/huge.tif": os.urandom(10000),
        "10_sks dog/layers.psd": os.urandom(100),
    }
    for rel, data in {**wanted, **clutter}.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / ".gpurunignore").write_text("# mine\n*.psd\n/raw/\n\n")  # read here, never uploaded (hidden)
    return wanted


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_exclude_patterns_follow_rsync_rules() -> None:
    rules = Excluder(["*.pyc", "/raw/", "cache/", "a/b.txt", "**/tmp_*", "im?.png"])
    assert rules.excluded("x/y/z.pyc", False)
    assert rules.excluded("raw", True) and not rules.excluded("sub/raw", True)  # anchored
    assert not rules.excluded("raw", False)  # trailing slash: folders only
    assert rules.excluded("deep/cache", True) and not rules.excluded("deep/cache", False)
    assert rules.excluded("a/b.txt", False) and rules.excluded("x/a/b.txt", False)
    assert not rules.excluded("xa/b.txt", False)  # matched at a component boundary
    assert rules.excluded("q/r/tmp_1", False)
    assert rules.excluded("img.png", False) and not rules.excluded("imgg.png", False)


def test_plan_upload_counts_what_push_will_send(tmp_path: Path) -> None:
    wanted = make_dataset(tmp_path)
    plan = plan_upload(tmp_path)
    assert {e.rel_path for e in plan.entries} == set(wanted)
    assert plan.files == len(wanted) and plan.bytes == sum(len(v) for v in wanted.values())
    assert plan.excludes[: len(DEFAULT_EXCLUDES)] == DEFAULT_EXCLUDES
    assert "UploadPlan(files=4" in repr(plan)


def test_gpurunignore_negation_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ".gpurunignore").write_text("*.png\n!keep.png\n")
    with pytest.raises(ConfigError, match="line 2") as caught:
        upload_excludes(tmp_path)
    assert caught.value.where == str(tmp_path / ".gpurunignore")


def test_rsync_output_parsing() -> None:
    progress = parse_progress("     32,768,000  78%   31.25MB/s    0:00:01 (xfr#1, to-chk=0/2)")
    assert progress == TransferProgress(32768000, 78, "31.25MB/s", "0:00:01")
    assert parse_progress("sending incremental file list") is None
    stats = parse_stats(
        "Number of files: 3 (reg: 2, dir: 1)\nNumber of regular files transferred: 1\n"
        "Total file size: 1,234,567 bytes\nTotal transferred file size: 1,000 bytes\n"
        "Literal data: 10 bytes\nMatched data: 990 bytes\nTotal bytes sent: 1,234\nTotal bytes received: 56\n"
    )
    assert (stats.files_total, stats.files_transferred, stats.total_size) == (3, 1, 1234567)
    assert (stats.literal_bytes, stats.matched_bytes, stats.bytes_sent, stats.bytes_received) == (10, 990, 1234, 56)


@pytest.mark.parametrize("method", METHODS)
async def test_push_sends_the_plan_then_only_what_changed(transport: Transport, tmp_path: Path, method: str) -> None:
    src, dst = tmp_path / "my dataset", tmp_path / "remote dir" / "data"  # spaces survive both hops
    wanted = make_dataset(src)
    big = os.urandom(600_000)
    (src / "model.bin").write_bytes(big)
    wanted["model.bin"] = big
    updates: list[TransferProgress] = []
    first = await sync.push(transport, src, str(dst), method=method, progress=updates.append)  # type: ignore[arg-type]
    assert tree(dst) == wanted
    assert first.method == method
    assert first.files_transferred == len(wanted)
    assert updates and updates[-1].percent == 100
    # nothing changed: nothing sent
    again = await sync.push(transport, src, str(dst), method=method)  # type: ignore[arg-type]
    assert again.files_transferred == 0
    # one file edited in the middle: only it travels, and over SSH rsync sends just the delta
    edited = big[:300_000] + b"EDITED" + big[300_006:]
    (src / "model.bin").write_bytes(edited)
    os.utime(src / "model.bin", (1_700_000_000, 1_700_000_000))
    third = await sync.push(transport, src, str(dst), method=method)  # type: ignore[arg-type]
    assert third.files_transferred == 1
    assert (dst / "model.bin").read_bytes() == edited
    if method == "rsync" and isinstance(transport, SshSession):
        assert third.matched_bytes > 500_000 and third.literal_bytes < 100_000


@pytest.mark.parametrize("method", METHODS)
async def test_pull_copies_a_folder_and_skips_unchanged_files(
    transport: Transport, tmp_path: Path, method: str
) -> None:
    remote = tmp_path / "instance" / "output"
    (remote / "samples").mkdir(parents=True)
    (remote / "lora-000001.safetensors").write_bytes(os.urandom(2048))
    (remote / "samples" / "grid.png").write_bytes(os.urandom(1024))
    local = tmp_path / "laptop"
    first = await sync.pull(transport, str(remote), local, method=method)  # type: ignore[arg-type]
    assert tree(local / "output") == tree(remote)
    assert first.files_transferred == 2
    second = await sync.pull(transport, str(remote) + "/", local / "flat", method=method)  # type: ignore[arg-type]
    assert tree(local / "flat") == tree(remote)
    assert second.files_transferred == 2
    (remote / "lora-000002.safetensors").write_bytes(b"new epoch")
    third = await sync.pull(transport, str(remote), local, method=method)  # type: ignore[arg-type]
    assert third.files_transferred == 1
    assert tree(local / "output") == tree(remote)
    single = await sync.pull(transport, str(remote / "samples" / "grid.png"), local / "one", method=method)  # type: ignore[arg-type]
    assert (
        single.files_transferred == 1
        and (local / "one" / "grid.png").read_bytes() == (remote / "samples" / "grid.png").read_bytes()
    )
    with pytest.raises(SyncError):
        await sync.pull(transport, str(remote / "missing"), local / "none", method=method)  # type: ignore[arg-type]


@pytest.mark.parametrize("method", METHODS)
async def test_fetch_verified_checks_sha256_and_never_leaves_partial_output(
    transport: Transport, tmp_path: Path, method: str
) -> None:
    remote = tmp_path / "instance" / "lora.safetensors"
    remote.parent.mkdir()
    payload = os.urandom(300_000)
    remote.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    out = tmp_path / "out"
    target = out / "lora.safetensors"

    result = await sync.fetch_verified(transport, str(remote), target, digest, size=len(payload), method=method)  # type: ignore[arg-type]
    assert target.read_bytes() == payload
    assert (result.bytes, result.sha256, result.method, result.cached) == (len(payload), digest, method, False)
    assert sorted(p.name for p in out.iterdir()) == ["lora.safetensors"]
    cached = await sync.fetch_verified(transport, str(remote), target, digest, method=method)  # type: ignore[arg-type]
    assert cached.cached

    # the file on the instance gets corrupted (one byte flipped): the fetch fails and writes nothing
    corrupted = bytearray(payload)
    corrupted[1234] ^= 0xFF
    remote.write_bytes(bytes(corrupted))
    other = out / "epoch2.safetensors"
    with pytest.raises(SyncError) as caught:
        await sync.fetch_verified(transport, str(remote), other, digest, method=method)  # type: ignore[arg-type]
    assert "checksum mismatch" in caught.value.message and str(remote) in caught.value.message
    assert caught.value.where == str(other)
    assert sorted(p.name for p in out.iterdir()) == ["lora.safetensors"]  # no output, no temp file

    # right bytes, wrong announced size: also refused
    remote.write_bytes(payload)
    with pytest.raises(SyncError, match="checksum mismatch"):
        await sync.fetch_verified(transport, str(remote), other, digest, size=len(payload) + 1, method=method)  # type: ignore[arg-type]
    # a missing remote file fails cleanly too
    with pytest.raises(SyncError):
        await sync.fetch_verified(transport, str(remote) + ".nope", other, digest, method=method)  # type: ignore[arg-type]
    assert sorted(p.name for p in out.iterdir()) == ["lora.safetensors"]


async def test_fetch_verified_auto_uses_the_open_connection_and_falls_back_to_rsync(
    transport: Transport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote = tmp_path / "final.safetensors"
    payload = os.urandom(10_000)
    remote.write_bytes(payload)
    digest = hashlib.sha256(payload).hexdigest()
    first = await sync.fetch_verified(transport, str(remote), tmp_path / "a" / "final.safetensors", digest)
    assert first.method == "sftp"

    async def no_file_channel(remote_path: str, local: Path, *, max_bytes: int | None = None) -> None:
        raise FileChannelUnavailable("the instance has no SFTP server", where=transport.where)

    monkeypatch.setattr(transport, "get_file", no_file_channel)
    second = await sync.fetch_verified(transport, str(remote), tmp_path / "b" / "final.safetensors", digest)
    assert second.method == "rsync" and (tmp_path / "b" / "final.safetensors").read_bytes() == payload
    with pytest.raises(FileChannelUnavailable):
        await sync.fetch_verified(transport, str(remote), tmp_path / "c" / "final.safetensors", digest, method="sftp")


def test_transfer_progress_plain_lines_when_not_a_terminal() -> None:
    import io

    from rich.console import Console

    from gpurun.remote.progress import transfer_progress

    buffer = io.StringIO()
    with transfer_progress("upload dataset", console=Console(file=buffer, force_terminal=False, width=200)) as cb:
        for percent in (0, 3, 12, 15, 47, 100):
            cb(TransferProgress(percent * 1000, percent, "1.00MB/s", "0:00:01"))
    assert buffer.getvalue().splitlines() == [
        "upload dataset: 0% (0 bytes) at 1.00MB/s",
        "upload dataset: 12% (12,000 bytes) at 1.00MB/s",
        "upload dataset: 47% (47,000 bytes) at 1.00MB/s",
        "upload dataset: 100% (100,000 bytes) at 1.00MB/s",
    ]
    terminal = io.StringIO()
    with transfer_progress("fetch", console=Console(file=terminal, force_terminal=True, width=100)) as cb:
        cb(TransferProgress(500, 50))
        cb(TransferProgress(1000, 100))
    assert "fetch" in terminal.getvalue()


@pytest.mark.sshd
async def test_an_interrupted_upload_resumes_from_the_partial_file(sshd_server: SshServer, tmp_path: Path) -> None:
    """--partial: the instance keeps what arrived; the next push sends only the rest (the lost-connection case)."""
    session = await ssh_session(sshd_server, "partial-push")
    try:
        src, dst = tmp_path / "data", tmp_path / "remote"
        src.mkdir()
        payload = os.urandom(4_000_000)
        (src / "big.bin").write_bytes(payload)
        moved: list[int] = []
        slow = asyncio.create_task(
            sync.push(
                session, src, str(dst), method="rsync", bwlimit_kbps=1000, progress=lambda p: moved.append(p.bytes_done)
            )
        )
        for _ in range(600):  # until at least 600 kB went over (at most 30 s on a busy machine)
            if (moved and moved[-1] >= 600_000) or slow.done():
                break
            await asyncio.sleep(0.05)
        assert not slow.done()
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        for _ in range(100):  # the receiver renames its temp file into place as it exits
            if (dst / "big.bin").exists():
                break
            await asyncio.sleep(0.05)
        kept = (dst / "big.bin").stat().st_size
        assert 0 < kept < len(payload)
        resumed = await sync.push(session, src, str(dst), method="rsync")
        assert resumed.matched_bytes >= kept - 65_536  # reused what arrived (up to one block)
        assert resumed.literal_bytes < len(payload)
        assert (dst / "big.bin").read_bytes() == payload
    finally:
        await session.close()


def make_links(root: Path, outside: Path) -> dict[str, bytes]:
    """Links a dataset may hold; returns what the upload sends for them (file links inside the dataset only)."""
    secret = outside / "secrets"
    secret.mkdir(parents=True)
    (secret / "id_rsa").write_bytes(b"PRIVATE KEY")
    concept = root / "10_cat"
    concept.mkdir(parents=True)
    (concept / "a.png").write_bytes(b"png bytes")
    (concept / "b.png").symlink_to(concept / "a.png")  # a file link inside: sent as the file
    (concept / "keys").symlink_to(secret)  # a folder outside: never
    (concept / "c.png").symlink_to(secret / "id_rsa")  # a file outside, however it is named: never
    (concept / "loop").symlink_to(concept)  # a loop: never followed
    (concept / "gone.png").symlink_to(concept / "missing.png")  # dangling
    return {"10_cat/a.png": b"png bytes", "10_cat/b.png": b"png bytes"}


def test_the_upload_never_follows_a_link_out_of_the_dataset(tmp_path: Path) -> None:
    wanted = make_links(tmp_path / "data", tmp_path / "home")
    plan = plan_upload(tmp_path / "data")
    assert {e.rel_path for e in plan.entries} == set(wanted)
    assert {"/10_cat/keys", "/10_cat/c.png", "/10_cat/loop", "/10_cat/gone.png"} <= set(plan.excludes)


@pytest.mark.parametrize("method", METHODS)
async def test_push_sends_file_links_inside_and_nothing_behind_links_out(
    transport: Transport, tmp_path: Path, method: str
) -> None:
    wanted = make_links(tmp_path / "data", tmp_path / "home")
    dst = tmp_path / "remote" / "data"
    await sync.push(transport, tmp_path / "data", str(dst), method=method)  # type: ignore[arg-type]
    assert tree(dst) == wanted and not any(p.is_symlink() for p in dst.rglob("*"))


def test_rsync_always_protects_file_names_from_the_remote_shell() -> None:
    from gpurun.remote.rsync import argv
    from gpurun.remote.transport import RsyncRoute

    args = argv(["src/"], "h:dst/", RsyncRoute(("ssh", "-p", "22"), "root@h"))
    assert "-s" in args[: args.index("-e")]


@pytest.mark.sshd
async def test_a_folder_name_with_shell_syntax_arrives_literally(sshd_server: SshServer, tmp_path: Path) -> None:
    """`10_$(touch PWNED) dog`: without argument protection, rsync before 3.2.4 hands such a name to the remote
    shell, which splits it at the space and runs the command."""
    src = tmp_path / "src"
    (src / "10_$(touch PWNED) dog").mkdir(parents=True)
    (src / "10_$(touch PWNED) dog" / "a.png").write_bytes(b"x")
    session = await ssh_session(sshd_server, "protect-args")
    try:
        dst = tmp_path / "remote $(touch PWNED2)"
        await sync.push(session, src, str(dst), method="rsync")
    finally:
        await session.close()
    assert (dst / "10_$(touch PWNED) dog" / "a.png").read_bytes() == b"x"
    assert not list(tmp_path.rglob("PWNED*")) and not (Path.home() / "PWNED").exists()
