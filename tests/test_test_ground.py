"""The test ground itself: loopback-only network and a working real sshd with rsync."""

from __future__ import annotations

import shutil
import socket
import subprocess

import pytest

from tests.support.sshd import SshServer


def test_non_loopback_connections_are_refused() -> None:
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="loopback"):
        sock.connect(("93.184.216.34", 80))


@pytest.mark.sshd
def test_real_sshd_runs_commands(sshd_server: SshServer) -> None:
    result = subprocess.run(sshd_server.ssh_argv("echo hello; exit 3"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 3
    assert result.stdout.strip() == "hello"


@pytest.mark.sshd
def test_rsync_over_real_sshd(sshd_server: SshServer, tmp_path) -> None:
    assert shutil.which("rsync"), "rsync is installed by .ci/run"
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "sub" / "a.txt").write_text("payload")
    dst = tmp_path / "dst"
    ssh = (
        f"ssh -p {sshd_server.port} -i {sshd_server.client_key} -o StrictHostKeyChecking=no "
        "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR"
    )
    subprocess.run(
        ["rsync", "-a", "-e", ssh, f"{src}/", f"{sshd_server.user}@127.0.0.1:{dst}/"], check=True, timeout=60
    )
    assert (dst / "sub" / "a.txt").read_text() == "payload"
