"""A real OpenSSH sshd on 127.0.0.1 with throwaway keys, for tests that need the genuine article (rsync, scp), and
a box's sshd: the provider says "log in as root", and the door puts the session into the box's unprivileged user.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd")


def find_sshd() -> str | None:
    for candidate in SSHD_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("sshd")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    client_key: Path  # private key authorised for `user`
    authorized_keys: Path  # append more public keys here (e.g. a run's own key)
    host_public_key: str
    root: Path

    def authorize(self, public_key: str) -> None:
        with self.authorized_keys.open("a") as handle:
            handle.write(public_key.strip() + "\n")

    def ssh_argv(self, command: str) -> list[str]:
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(self.client_key),
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "BatchMode=yes",
            "-o",
            "LogLevel=ERROR",
            f"{self.user}@{self.host}",
            command,
        ]


#: ForceCommand of a box's sshd. The providers' machines are logged into as root; the test ground's machine is an
#: unprivileged user (tests/support/boxes.py), so every session (commands, rsync, SFTP) runs as that user, in its home,
#: with its ~/.bashrc read the way bash reads it for an SSH command.
BOX_DOOR = """#!/bin/bash
box={user}
home={home}
cmd="${{SSH_ORIGINAL_COMMAND:-}}"
cd "$home"
case "$cmd" in
  internal-sftp|sftp|*/sftp-server) exec {runuser} -u "$box" -- /usr/lib/openssh/sftp-server ;;
esac
export HOME="$home" USER="$box" LOGNAME="$box" SHELL=/bin/bash BASH_ENV="$home/.bashrc"
export PATH=/usr/local/bin:/usr/bin:/bin
exec {runuser} -u "$box" -- /bin/bash -c "$cmd"
"""


def start_sshd(
    root: Path, *, box_user: str | None = None, box_home: Path | None = None
) -> tuple[subprocess.Popen[bytes], SshServer]:
    """An sshd on a free loopback port. With `box_user`, it admits root with the keys in the box's own
    ~/.ssh/authorized_keys (what the provider's start puts there) and runs every session as the box user."""
    sshd = find_sshd()
    if sshd is None:
        raise RuntimeError("OpenSSH sshd is not installed; run `bash .ci/run` or `apt-get install openssh-server`")
    root.mkdir(parents=True, exist_ok=True)
    host_key = root / "host_ed25519"
    client_key = root / "client_ed25519"
    keygen(host_key)
    keygen(client_key)
    authorized = root / "authorized_keys"
    authorized.write_text((root / "client_ed25519.pub").read_text())
    os.chmod(authorized, 0o600)
    box_lines = []
    if box_user is not None:
        assert box_home is not None
        door = root / "door"
        runuser = shutil.which("runuser", path="/usr/sbin:/sbin:/usr/bin:/bin") or "runuser"
        door.write_text(BOX_DOOR.format(user=box_user, home=box_home, runuser=runuser))
        os.chmod(door, 0o755)
        authorized = box_home / ".ssh" / "authorized_keys"
        box_lines = ["AllowUsers root", f"ForceCommand {door}"]
    if os.geteuid() == 0:
        # sshd insists on its privilege-separation directory when started as root
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    port = free_port()
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"Port {port}",
                "ListenAddress 127.0.0.1",
                f"HostKey {host_key}",
                f"PidFile {root / 'sshd.pid'}",
                f"AuthorizedKeysFile {authorized}",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "UsePAM no",
                "StrictModes no",
                "PermitRootLogin prohibit-password",
                "PermitUserEnvironment no",
                "AcceptEnv PYTHONUNBUFFERED GPURUN_*",
                "MaxStartups 100:30:200",
                "MaxSessions 50",
                "Subsystem sftp internal-sftp",
                *box_lines,
                "",
            ]
        )
    )
    log = root / "sshd.log"
    with log.open("wb") as log_file:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=log_file, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sshd exited with {proc.returncode}: {log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
        except OSError:
            time.sleep(0.02)
    else:
        proc.kill()
        raise RuntimeError("sshd did not start listening within 10 s")
    server = SshServer(
        host="127.0.0.1",
        port=port,
        user="root" if box_user else getpass.getuser(),
        client_key=client_key,
        authorized_keys=authorized,
        host_public_key=(root / "host_ed25519.pub").read_text().strip(),
        root=root,
    )
    return proc, server
