"""Per-run SSH identity and host-key pinning: one ed25519 key pair and one known_hosts file per run.

Each run gets its own key (so a leaked key opens one disposable machine, and `gpurun down` can forget it)
and its own known_hosts. The instance's host key is trusted on first contact and pinned in that file in
OpenSSH format, so asyncssh and the `ssh` that rsync runs enforce the same pin afterwards: a changed host
key on a reconnect is refused, never silently accepted.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import asyncssh

from gpurun.errors import ConfigError, SshError
from gpurun.models import SshEndpoint
from gpurun.settings import state_dir, write_private_file

_RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True, slots=True)
class RunKeys:
    """Where a run's SSH identity lives: `<state>/runs/<run_id>/id_ed25519{,.pub}` and `known_hosts`."""

    private_key: Path
    public_key: Path
    known_hosts: Path

    def public_key_text(self) -> str:
        """The one-line OpenSSH public key, for authorized_keys / the provider's PUBLIC_KEY."""
        return self.public_key.read_text(encoding="utf-8").strip()


def run_dir(run_id: str) -> Path:
    """The run's private folder in the state dir (created 0700)."""
    if not _RUN_ID.match(run_id):
        raise ConfigError(f"invalid run id {run_id!r}", hint="use letters, digits, '.', '_' and '-'")
    path = state_dir() / "runs" / run_id
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def ensure_run_keys(run_id: str) -> RunKeys:
    """The run's key pair, generated on first use (private key 0600); idempotent."""
    folder = run_dir(run_id)
    keys = RunKeys(folder / "id_ed25519", folder / "id_ed25519.pub", folder / "known_hosts")
    if not keys.private_key.exists() or not keys.public_key.exists():
        key = asyncssh.generate_private_key("ssh-ed25519", comment=f"gpurun-{run_id}")
        write_private_file(keys.private_key, key.export_private_key("openssh").decode("ascii"))
        keys.public_key.write_text(key.export_public_key("openssh").decode("ascii"), encoding="utf-8")
        os.chmod(keys.public_key, 0o644)
    if not keys.known_hosts.exists():
        write_private_file(keys.known_hosts, "")
    return keys


def host_pattern(endpoint: SshEndpoint) -> str:
    """How OpenSSH names a host in known_hosts: `host` on port 22, `[host]:port` otherwise."""
    return endpoint.host if endpoint.port == 22 else f"[{endpoint.host}]:{endpoint.port}"


class HostKeyPins:
    """The run's known_hosts file: first contact pins, later contacts must match."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []

    def pinned(self, endpoint: SshEndpoint) -> list[asyncssh.SSHKey]:
        """The host keys pinned for this endpoint (empty before first contact)."""
        pattern = host_pattern(endpoint)
        keys = []
        for line in self._lines():
            fields = line.split()
            if len(fields) >= 3 and pattern in fields[0].split(","):
                try:
                    keys.append(asyncssh.import_public_key(f"{fields[1]} {fields[2]}"))
                except (asyncssh.KeyImportError, ValueError) as exc:
                    raise SshError(
                        f"unreadable pinned host key for {pattern}: {exc}",
                        where=str(self.path),
                        hint="delete that line only if you know the host key legitimately changed",
                    ) from None
        return keys

    def pin(self, endpoint: SshEndpoint, key: asyncssh.SSHKey) -> None:
        """Record `key` for the endpoint (replacing nothing: callers pin only on first contact)."""
        algorithm, blob = key.export_public_key("openssh").decode("ascii").split()[:2]
        lines = [*self._lines(), f"{host_pattern(endpoint)} {algorithm} {blob}"]
        self._write(lines)

    def forget(self, endpoint: SshEndpoint) -> None:
        """Drop the endpoint's pin (the orchestrator does this when it replaces the instance behind it)."""
        pattern = host_pattern(endpoint)
        kept = [line for line in self._lines() if pattern not in (line.split() or [""])[0].split(",")]
        self._write(kept)

    def _write(self, lines: list[str]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        write_private_file(tmp, "".join(line + "\n" for line in lines))
        os.replace(tmp, self.path)
