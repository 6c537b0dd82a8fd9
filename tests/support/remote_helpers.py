"""Shared pieces for the remote tests: one fixture body per transport (real sshd, or this machine)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gpurun.models import SshEndpoint
from gpurun.remote.keys import ensure_run_keys
from gpurun.remote.local_transport import LocalTransport
from gpurun.remote.session import SshSession, connect
from gpurun.remote.transport import Transport
from tests.support.sshd import SshServer


def endpoint_of(server: SshServer) -> SshEndpoint:
    return SshEndpoint(server.host, server.port, server.user)


async def ssh_session(server: SshServer, run_id: str = "test-run") -> SshSession:
    """Connect to the fixture sshd the way job.py will: a per-run key, authorised, pinned on first contact."""
    keys = ensure_run_keys(run_id)
    server.authorize(keys.public_key_text())
    return await connect(endpoint_of(server), keys.private_key, keys.known_hosts, deadline=time.monotonic() + 30)


@pytest.fixture(name="transport", params=[pytest.param("ssh", marks=pytest.mark.sshd), "local"])
async def transport_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Transport]:
    """The same test body against both transports: SSH to the real sshd, and this machine without SSH.
    Import `transport_fixture` into a test module to use it as `transport`."""
    if request.param == "ssh":
        session = await ssh_session(request.getfixturevalue("sshd_server"))
        try:
            yield session
        finally:
            await session.close()
    else:
        yield LocalTransport(tmp_path / "local-home")
