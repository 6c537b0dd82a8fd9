"""The test ground's rented machines ("boxes"): unprivileged Unix users on this machine, reached over the real sshd,
started and destroyed the way a provider starts and destroys a container.

A box is a dedicated user with its own home, whose only Python is the one its `~/.bashrc` puts on PATH (an image's
ENV reaches an SSH session that way; RunPod's start script does exactly this). Two images:

- stock: Debian's python3.11 in a venv holding torch and nothing else, like a plain PyTorch image;
- warm: the same plus gpurun's lock for Python 3.11, like an image that already carries the training stack.

Neither sees this test venv, GPURUN_PYTHON or the dev packages. The fake providers "boot" a container on a box by
running the provider's start sequence as the box user (Vast: its key setup, then `onstart`; RunPod: the image's
/start.sh or the pod's start command) and "destroy" it by killing every process of the box user and removing
what the container wrote. The box user is not root, so a watchdog's fallback (`shutdown -h now`) cannot act here.

Creating users needs root (CI runs as root); elsewhere the box tests skip with that reason. The box Pythons are
built once and kept in /var/tmp/gpurun-test-boxes, keyed by what is in them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import pwd
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from gpurun.remote.boxlock import lock_filename
from tests.support.env import REPO_ROOT

BOXES_ROOT = Path("/var/tmp/gpurun-test-boxes")
STOCK_PYTHON = "/usr/bin/python3.11"
#: the CPU build of torch this machine carries as a local file (see the README)
TORCH_SPEC = "torch==2.13.0"
LOCKS = REPO_ROOT / "gpurun" / "templates" / "box"


@dataclass(frozen=True)
class Box:
    """One box user: who it is, its home, and the Python its image provides."""

    name: str
    uid: int
    gid: int
    home: Path
    python_bin: Path
    #: environment lines its ~/.bashrc exports (the image's ENV as an SSH session sees it)
    image_env: tuple[tuple[str, str], ...] = ()

    def with_image(self, python_bin: Path) -> Box:
        """The same user, booted from another image (its Python on PATH); call `reset()` to write its .bashrc."""
        env = tuple((k, f"{python_bin}:$PATH" if k == "PATH" else v) for k, v in self.image_env)
        return dataclasses.replace(self, python_bin=python_bin, image_env=env)

    @property
    def runs(self) -> Path:
        """Where gpurun puts run folders on a box without a workdir (`$HOME/gpurun/<run>`)."""
        return self.home / "gpurun"

    def reset(self, *, keep: tuple[str, ...] = ()) -> None:
        """A fresh container's home: empty but for `keep` (names in the home), a .bashrc and an empty .ssh."""
        kill_user_processes(self.uid)
        _reap(self.uid)
        shutil.rmtree(self.remains, ignore_errors=True)
        for entry in list(self.home.iterdir()) if self.home.exists() else []:
            if entry.name not in keep:
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / ".ssh").mkdir(exist_ok=True)
        exports = "".join(f"export {k}={v}\n" for k, v in self.image_env)
        self.write(".bashrc", f"# the image's environment, as an SSH session sees it\n{exports}")
        self.write(".ssh/authorized_keys", "", mode=0o600)
        for path in (self.home, self.home / ".ssh"):
            os.chown(path, self.uid, self.gid)
        os.chmod(self.home / ".ssh", 0o700)

    def write(self, relative: str, text: str, *, mode: int = 0o644) -> Path:
        """A file in the box's home, owned by the box user (the fake provider's hand inside the container)."""
        path = self.home / relative
        for parent in reversed(path.relative_to(self.home).parents[:-1]):
            folder = self.home / parent
            if not folder.exists():
                folder.mkdir()
                os.chown(folder, self.uid, self.gid)
        path.write_text(text)
        os.chmod(path, mode)
        os.chown(path, self.uid, self.gid)
        return path

    def authorized_keys(self) -> list[str]:
        path = self.home / ".ssh" / "authorized_keys"
        return [line for line in path.read_text().splitlines() if line.strip()] if path.exists() else []

    def start(self, command: str, env: dict[str, str], *, log: str = "container.log") -> subprocess.Popen[bytes]:
        """Run `command` with bash as the box user, detached, in a container's environment (the image's ENV and
        the provider's variables): what a provider does when it starts the container."""
        system_path = "/usr/local/bin:/usr/bin:/bin"
        image = {k: v.replace("$PATH", system_path) for k, v in self.image_env}
        full_env = {
            "HOME": str(self.home), "USER": self.name, "LOGNAME": self.name, "SHELL": "/bin/bash",
            "PATH": system_path, **image, **env,
        }  # fmt: skip
        out = self.home / log
        with out.open("ab") as handle:
            os.chown(out, self.uid, self.gid)
            proc = subprocess.Popen(
                ["/bin/bash", "-c", command], user=self.uid, group=self.gid, extra_groups=[], env=full_env,
                cwd=self.home, stdin=subprocess.DEVNULL, stdout=handle, stderr=handle, start_new_session=True,
            )  # fmt: skip
        _STARTED.setdefault(self.uid, []).append(proc)
        return proc

    @property
    def remains(self) -> Path:
        """The run folders as they were when the last instance on this box was destroyed (for assertions)."""
        return BOXES_ROOT / "remains" / self.name

    def destroy(self) -> None:
        """What destroying the instance does to the machine: every process of the container ends and its run
        folders go (kept aside in `remains` for the tests; ~/.gpurun stays, as on a warm host)."""
        kill_user_processes(self.uid)
        _reap(self.uid)
        if self.runs.exists():
            shutil.rmtree(self.remains, ignore_errors=True)
            self.remains.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.runs), str(self.remains))

    def signal(self, number: int) -> None:
        """Send `number` to every process of the container (a provider's stop warning)."""
        for pid in user_processes(self.uid):
            with contextlib.suppress(OSError):
                os.kill(pid, number)

    def stop(self) -> None:
        """What stopping the container does (a provider taking an interruptible machine): every process ends, its
        SSH sessions too, and the disk stays as it was. Nothing can log in until it starts again: the container's
        sshd is down with it, which an emptied authorized_keys stands in for here (the box's sshd is shared)."""
        kill_user_processes(self.uid)
        _reap(self.uid)
        self.write(".ssh/authorized_keys", "", mode=0o600)

    def processes(self) -> list[int]:
        return user_processes(self.uid)


#: containers started per box user, reaped when the box is destroyed (an unreaped Popen warns when collected)
_STARTED: dict[int, list[subprocess.Popen[bytes]]] = {}


def user_processes(uid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if entry.stat().st_uid == uid and "Z" not in _state(entry):
                    found.append(int(entry.name))
    return found


def _state(entry: Path) -> str:
    try:
        return entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "X"


def kill_user_processes(uid: int, timeout: float = 10.0) -> None:
    """SIGKILL every process of `uid` until none is left (sshd's session processes included: a destroyed
    machine drops its SSH connections too)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        pids = user_processes(uid)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    raise RuntimeError(f"processes of uid {uid} survived SIGKILL: {user_processes(uid)}")


def _reap(uid: int) -> None:
    for proc in _STARTED.pop(uid, []):
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


# -- the images' Pythons --------------------------------------------------------------------------------------


def can_make_boxes() -> str | None:
    """None when this machine can host boxes, else why not."""
    if os.geteuid() != 0:
        return "box users are created with useradd, which needs root (CI runs as root)"
    if not os.access(STOCK_PYTHON, os.X_OK):
        return f"{STOCK_PYTHON} (Debian's python3.11, the boxes' stock interpreter) is missing; run .ci/run"
    if shutil.which("useradd") is None:
        return "useradd is missing"
    return None


def image_python(kind: str) -> Path:
    """The bin folder of a box image's Python, built once and shared read-only by box users: "bare" (no torch),
    "stock" (torch only) or "warm" (torch and the lock)."""
    lock = (LOCKS / lock_filename("3.11")).read_bytes()
    key = hashlib.sha256(TORCH_SPEC.encode() + (lock if kind == "warm" else b"")).hexdigest()[:12]
    folder = BOXES_ROOT / f"{kind}-py311-{key}"
    if (folder / ".ready").exists():
        return folder / "bin"
    BOXES_ROOT.mkdir(parents=True, exist_ok=True)
    os.chmod(BOXES_ROOT, 0o755)
    shutil.rmtree(folder, ignore_errors=True)  # a build that did not finish (no .ready)
    pip = [str(folder / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    quiet = {"check": True, "capture_output": True, "timeout": 1200}
    subprocess.run([STOCK_PYTHON, "-m", "venv", str(folder)], **quiet)
    if kind == "bare":
        (folder / ".ready").write_text("no torch\n")
        return folder / "bin"
    subprocess.run([*pip, TORCH_SPEC], **quiet)
    if kind == "warm":
        subprocess.run([*pip, "--no-deps", "-r", str(LOCKS / lock_filename("3.11"))], **quiet)
    subprocess.run([str(folder / "bin" / "python"), "-c", "import torch"], check=True, timeout=300)
    for path in [folder, *folder.rglob("*")]:  # readable by the box users
        with contextlib.suppress(OSError):
            if not path.is_symlink():
                os.chmod(path, path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    (folder / ".ready").write_text(TORCH_SPEC + "\n")
    return folder / "bin"


def ensure_user(name: str, python_bin: Path, image_env: dict[str, str]) -> Box:
    """The box user `name` (created if missing, its login unlocked for key-only SSH), with a fresh home."""
    try:
        record = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--home-dir", f"/home/{name}", "--shell", "/bin/bash", name],
                       check=True, timeout=60)  # fmt: skip
        record = pwd.getpwnam(name)
    # sshd without PAM refuses a locked account ("!" in shadow); "*" allows keys and no password
    subprocess.run(["usermod", "-p", "*", name], check=True, timeout=60)
    env = {"PATH": f"{python_bin}:$PATH", **image_env}
    box = Box(name, record.pw_uid, record.pw_gid, Path(record.pw_dir), python_bin, tuple(env.items()))
    box.reset()
    return box


def remove_user(box: Box) -> None:
    with contextlib.suppress(RuntimeError):
        kill_user_processes(box.uid)
    subprocess.run(["userdel", "--remove", box.name], check=False, capture_output=True, timeout=60)
