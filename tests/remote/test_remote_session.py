"""SSH specifics against the real sshd: per-run keys, host-key pinning, failure classification."""

from __future__ import annotations

import asyncio
import getpass
import stat
import subprocess
import sys
import time
from pathlib import Path

import asyncssh
import pytest

from gpurun.errors import ConfigError, SshError, SyncError, TransientSshError
from gpurun.models import SshEndpoint
from gpurun.remote import rsync, sync
from gpurun.remote.keys import HostKeyPins, ensure_run_keys, host_pattern
from gpurun.remote.session import connect
from gpurun.settings import state_dir
from tests.support.remote_helpers import endpoint_of, ssh_session
from tests.support.sshd import SshServer, free_port, start_sshd


def test_run_keys_are_private_ed25519_and_idempotent() -> None:
    keys = ensure_run_keys("r-2024.1_a")
    assert keys.private_key == state_dir() / "runs" / "r-2024.1_a" / "id_ed25519"
    assert keys.public_key == keys.private_key.with_name("id_ed25519.pub")
    assert stat.S_IMODE(keys.private_key.stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.private_key.parent.stat().st_mode) == 0o700
    assert keys.public_key_text().startswith("ssh-ed25519 ") and keys.public_key_text().endswith("gpurun-r-2024.1_a")
    private = asyncssh.read_private_key(keys.private_key)
    assert private.export_public_key().decode().split()[1] == keys.public_key_text().split()[1]
    again = ensure_run_keys("r-2024.1_a")
    assert again.public_key_text() == keys.public_key_text()  # not regenerated
    with pytest.raises(ConfigError, match="invalid run id"):
        ensure_run_keys("../escape")


def test_host_pattern_follows_openssh() -> None:
    assert host_pattern(SshEndpoint("1.2.3.4", 22)) == "1.2.3.4"
    assert host_pattern(SshEndpoint("1.2.3.4", 40022)) == "[1.2.3.4]:40022"


@pytest.mark.sshd
async def test_connect_with_the_run_key_pins_the_host_key_on_first_contact(sshd_server: SshServer) -> None:
    keys = ensure_run_keys("pin-run")
    assert keys.known_hosts.read_text() == ""
    session = await ssh_session(sshd_server, "pin-run")
    try:
        assert (await session.run("echo ok")).stdout == "ok\n"
    finally:
        await session.close()
    line = keys.known_hosts.read_text().strip()
    algorithm, blob = sshd_server.host_public_key.split()[:2]
    assert line == f"[127.0.0.1]:{sshd_server.port} {algorithm} {blob}"
    # the pinned key is enforced (and not pinned twice) on the next contact, and OpenSSH reads the same file
    again = await connect(endpoint_of(sshd_server), keys.private_key, keys.known_hosts)
    await again.close()
    assert keys.known_hosts.read_text().strip() == line
    ssh = subprocess.run(
        [*again.rsync_route().ssh_argv, f"{sshd_server.user}@127.0.0.1", "echo via-openssh"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert ssh.returncode == 0, ssh.stderr
    assert ssh.stdout == "via-openssh\n"


@pytest.mark.sshd
async def test_a_changed_host_key_is_refused_by_asyncssh_and_by_rsync(
    sshd_server: SshServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second sshd (its own host key) appears at an address whose key this run pinned from the first."""
    keys = ensure_run_keys("swap-run")
    first = await ssh_session(sshd_server, "swap-run")
    await first.close()
    proc, impostor = start_sshd(tmp_path_factory.mktemp("impostor"))
    try:
        impostor.authorize(keys.public_key_text())
        victim = endpoint_of(impostor)
        first_key = asyncssh.import_public_key(sshd_server.host_public_key)
        HostKeyPins(keys.known_hosts).pin(victim, first_key)  # as if the first server had been there
        started = time.monotonic()
        with pytest.raises(SshError) as caught:
            await connect(victim, keys.private_key, keys.known_hosts, deadline=time.monotonic() + 30)
        assert not isinstance(caught.value, TransientSshError)
        assert time.monotonic() - started < 10  # refused at once, not retried until the deadline
        assert f"[127.0.0.1]:{impostor.port}" in caught.value.message and "pinned" in caught.value.message
        assert caught.value.where == str(victim)
        # rsync's ssh uses the same pinned file with StrictHostKeyChecking=yes
        route_session = await connect(endpoint_of(sshd_server), keys.private_key, keys.known_hosts)
        route = route_session.rsync_route()
        await route_session.close()
        impostor_route = type(route)(
            tuple(str(impostor.port) if a == str(sshd_server.port) else a for a in route.ssh_argv),
            route.prefix,
        )
        src = tmp_path_factory.mktemp("src")
        (src / "a.txt").write_text("x")
        args = rsync.argv([f"{src}/"], impostor_route.target(str(tmp_path_factory.mktemp("dst")) + "/"), impostor_route)
        with pytest.raises(SshError, match="host key") as rsync_error:
            await rsync.run(args, where=str(victim))
        assert not isinstance(rsync_error.value, TransientSshError)
        # forgetting the pin (the orchestrator does this when it replaces an instance) allows a new first contact
        HostKeyPins(keys.known_hosts).forget(victim)
        fresh = await connect(victim, keys.private_key, keys.known_hosts)
        await fresh.close()
        assert impostor.host_public_key.split()[1] in keys.known_hosts.read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.sshd
async def test_an_unauthorised_key_is_an_ssh_error_with_a_hint_and_is_not_retried(sshd_server: SshServer) -> None:
    keys = ensure_run_keys("never-authorised")
    started = time.monotonic()
    with pytest.raises(SshError) as caught:
        await connect(endpoint_of(sshd_server), keys.private_key, keys.known_hosts, deadline=time.monotonic() + 30)
    assert not isinstance(caught.value, TransientSshError)
    assert time.monotonic() - started < 10
    assert "rejected the run's SSH key" in caught.value.message
    assert "authorized_keys" in (caught.value.hint or "") and str(keys.private_key) in (caught.value.hint or "")


async def test_a_refused_connection_is_retried_until_the_deadline() -> None:
    keys = ensure_run_keys("refused")
    endpoint = SshEndpoint("127.0.0.1", free_port(), "root")  # nothing listens there
    started = time.monotonic()
    with pytest.raises(TransientSshError) as caught:
        await connect(endpoint, keys.private_key, keys.known_hosts, deadline=time.monotonic() + 2.5, initial_wait=0.2)
    elapsed = time.monotonic() - started
    assert 1.0 < elapsed < 15
    assert caught.value.where == str(endpoint) and "cannot reach" in caught.value.message


@pytest.mark.sshd
async def test_connect_succeeds_once_sshd_comes_up(tmp_path: Path) -> None:
    """An instance whose sshd starts a little after the first attempt: the retries bridge the gap."""
    import tests.support.sshd as sshd_module

    port = free_port()
    keys = ensure_run_keys("late-boot")
    servers = []

    async def boot_later() -> None:
        await asyncio.sleep(1.5)
        original = sshd_module.free_port
        sshd_module.free_port = lambda: port  # start the sshd on the port the client is already trying
        try:
            proc, server = start_sshd(tmp_path / "late")
        finally:
            sshd_module.free_port = original
        server.authorize(keys.public_key_text())
        servers.append(proc)

    booting = asyncio.create_task(boot_later())
    try:
        session = await connect(
            SshEndpoint("127.0.0.1", port, getpass.getuser()),
            keys.private_key, keys.known_hosts, deadline=time.monotonic() + 30, initial_wait=0.2,
        )  # fmt: skip
        assert (await session.run("echo up")).stdout == "up\n"
        await session.close()
    finally:
        await booting
        for proc in servers:
            proc.terminate()
            proc.wait(timeout=10)


@pytest.mark.sshd
async def test_dropped_connection_during_a_command_is_transient(sshd_server: SshServer) -> None:
    session = await ssh_session(sshd_server, "drop-run")
    try:
        task = asyncio.create_task(session.run("sleep 20"))
        await asyncio.sleep(0.5)
        session.connection.abort()
        with pytest.raises(TransientSshError, match="connection lost"):
            await task
        await session.reconnect()
        assert (await session.run("echo back")).stdout == "back\n"
    finally:
        await session.close()


@pytest.mark.sshd
async def test_concurrent_reconnects_after_one_drop_make_one_new_connection(sshd_server: SshServer) -> None:
    session = await ssh_session(sshd_server, "shared-session")
    try:
        session.connection.abort()
        old = session.connection
        results = await asyncio.gather(*(session.reconnect() for _ in range(3)))
        assert all(r is session for r in results)
        assert session.generation == 1 and session.connection is not old
        assert (await session.run("echo one")).stdout == "one\n"
    finally:
        await session.close()


@pytest.mark.sshd
async def test_sftp_fallback_is_chosen_when_the_instance_lacks_rsync(
    sshd_server: SshServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = await ssh_session(sshd_server, "no-rsync")
    try:
        assert await sync.choose_method(session) == "rsync"
        real = session.has_command

        async def image_without_rsync(name: str) -> bool:
            return False if name == "rsync" else await real(name)

        monkeypatch.setattr(session, "has_command", image_without_rsync)
        assert await sync.choose_method(session) == "sftp"
        with pytest.raises(SyncError, match="the instance has no rsync"):
            await sync.choose_method(session, "rsync")
    finally:
        await session.close()


def test_remote_package_stays_light_and_independent_of_providers() -> None:
    """DESIGN's import rules: remote never imports provision, and nothing here loads the training stack."""
    code = (
        "import sys, gpurun.remote.session, gpurun.remote.local_transport, gpurun.remote.sync, gpurun.remote.follow, "
        "gpurun.remote.bootstrap, gpurun.remote.keys\n"
        "bad = sorted(m for m in sys.modules if m.startswith('gpurun.provision') or m.split('.')[0] in "
        "('torch', 'diffusers', 'transformers', 'peft', 'bitsandbytes'))\n"
        "print(bad)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_both_transports_implement_the_protocol(tmp_path: Path) -> None:
    from gpurun.remote.local_transport import LocalTransport
    from gpurun.remote.session import SshSession
    from gpurun.remote.transport import Transport

    assert isinstance(LocalTransport(tmp_path), Transport)
    members = [name for name in dir(Transport) if not name.startswith("_")]
    assert all(callable(getattr(SshSession, name)) for name in members if name != "where")
