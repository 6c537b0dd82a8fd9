"""Test ground: loopback-only network, an isolated gpurun home per test, the real sshd fixture, CLI helpers."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.env import run_gpurun
from tests.support.sshd import SshServer, start_sshd

# Fixture modules shared by many test files: the tiny SD models and the fake provider servers.
pytest_plugins = ["tests.support.tiny_models", "tests.support.fakes.fixtures", "tests.support.e2e"]

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex


def _is_local(address: object) -> bool:
    if isinstance(address, (str, bytes)):  # AF_UNIX paths
        return True
    host = address[0] if isinstance(address, tuple) else None
    if host in ("localhost", ""):
        return True
    try:
        return ipaddress.ip_address(str(host)).is_loopback
    except ValueError:
        return False


def _guarded_connect(self: socket.socket, address: object) -> None:
    if not _is_local(address):
        raise ConnectionRefusedError(f"tests may only reach loopback, not {address!r}")
    return _real_connect(self, address)


def _guarded_connect_ex(self: socket.socket, address: object) -> int:
    if not _is_local(address):
        raise ConnectionRefusedError(f"tests may only reach loopback, not {address!r}")
    return _real_connect_ex(self, address)


def pytest_configure(config: pytest.Config) -> None:
    # Network blocked except loopback, for the whole session (in-process code; subprocesses get HF offline).
    socket.socket.connect = _guarded_connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _guarded_connect_ex  # type: ignore[method-assign]
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ["DO_NOT_TRACK"] = "1"


@pytest.fixture(autouse=True)
def gpurun_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own config and state dirs and no real API keys."""
    home = tmp_path_factory.mktemp("gpurun-home")
    monkeypatch.setenv("GPURUN_CONFIG_DIR", str(home / "config"))
    monkeypatch.setenv("GPURUN_STATE_DIR", str(home / "state"))
    for var in ("VAST_API_KEY", "RUNPOD_API_KEY", "GPURUN_VAST_URL", "GPURUN_RUNPOD_URL", "GPURUN_RUNPOD_GRAPHQL_URL"):
        monkeypatch.delenv(var, raising=False)
    return home


@pytest.fixture
def gpurun_cli():
    """Callable running the CLI in a subprocess: gpurun_cli("dataset", "check", path)."""
    return run_gpurun


@pytest.fixture(scope="session")
def sshd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    """A real OpenSSH sshd on 127.0.0.1 with throwaway host and client keys (installed by .ci/run)."""
    proc, server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
