"""Run `templates/bootstrap.sh` on the instance and read its progress lines.

The script prints `GPURUN_BOOTSTRAP phase=... status=... key=value` lines (values shell-quoted) on stdout;
everything else is for people. `run_bootstrap` ships the script and the box locks, streams it, hands each
progress line to a callback, and returns the interpreter, the PYTHONPATH entry and the model path the runner
should use.
"""

from __future__ import annotations

import posixpath
import shlex
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from gpurun.errors import ConfigError, RemoteError
from gpurun.remote.boxlock import lock_texts
from gpurun.remote.transport import CommandError, Transport, tail

MARKER = "GPURUN_BOOTSTRAP"
_EXIT_MEANING = {
    2: "bad arguments or model spec",
    3: "no usable python or PyTorch in the image (or no lock for its Python)",
    4: "installing the locked training environment failed",
    5: "the base model is missing or its download failed",
    6: "the training stack cannot train on this machine (the smoke check failed); nothing was downloaded",
}


class BootstrapError(RemoteError):
    """bootstrap.sh failed; `code` is its exit code (see the script's header). The hint says what the code means
    and quotes the box's last words (uv's or curl's own explanation is usually there)."""

    def __init__(self, message: str, *, code: int, last_lines: list[str], where: str | None = None) -> None:
        meaning = _EXIT_MEANING.get(code)
        quoted = [line.strip() for line in last_lines if line.strip() and not line.startswith(MARKER)][-3:]
        hint = "; ".join(filter(None, [meaning, ("the machine said: " + " | ".join(quoted)) if quoted else None]))
        super().__init__(message, where=where, hint=hint or None)
        self.code = code
        self.last_lines = last_lines


@dataclass(frozen=True, slots=True)
class BootstrapLine:
    phase: str
    status: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    #: the image's interpreter (it keeps the image's CUDA torch)
    python: str
    #: the folder with the locked stack, to put first on PYTHONPATH; "" when the image already had it (warm)
    pythonpath: str
    #: the base model on the instance; "" when none was asked for
    model_path: str
    #: warm (the image had the lock) | cached (installed by an earlier run) | installed
    env_status: str
    lines: tuple[BootstrapLine, ...] = ()


def script_text() -> str:
    """The bootstrap script as shipped in the package."""
    return resources.files("gpurun").joinpath("templates/bootstrap.sh").read_text(encoding="utf-8")


def parse_line(line: str) -> BootstrapLine | None:
    """A progress line, or None for anything else."""
    if not line.startswith(MARKER + " "):
        return None
    try:
        words = shlex.split(line[len(MARKER) + 1 :])
    except ValueError:
        return None
    fields = dict(word.split("=", 1) for word in words if "=" in word)
    phase, status = fields.pop("phase", ""), fields.pop("status", "")
    return BootstrapLine(phase, status, fields) if phase else None


def bootstrap_args(
    *,
    home: str,
    lock_dir: str,
    bundle: str | None = None,
    model: str | None = None,
    model_files: Sequence[str] = (),
    model_file: str | None = None,
    model_sha256: str | None = None,
) -> list[str]:
    args = ["--home", home, "--lock-dir", lock_dir]
    if bundle:
        args += ["--bundle", bundle]
    if model:
        args += ["--model", model]
    if model_files:
        args += ["--model-files", " ".join(model_files)]
    if model_file:
        args += ["--model-file", model_file]
    if model_sha256:
        args += ["--model-sha256", model_sha256]
    return args


async def ship_locks(transport: Transport, home: str) -> str:
    """Upload bootstrap.sh and every box lock to `home`; returns the lock folder there."""
    lock_dir = posixpath.join(home.rstrip("/"), "lock")
    await transport.makedirs(lock_dir)
    await transport.put_text(posixpath.join(home.rstrip("/"), "bootstrap.sh"), script_text(), mode=0o755)
    for name, text in lock_texts().items():
        await transport.put_text(posixpath.join(lock_dir, name), text)
    return lock_dir


async def run_bootstrap(
    transport: Transport,
    *,
    home: str,
    bundle: str | None = None,
    model: str | None = None,
    model_files: Sequence[str] = (),
    model_file: str | None = None,
    model_sha256: str | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[BootstrapLine], None] | None = None,
) -> BootstrapResult:
    """Ship bootstrap.sh and the locks to `home` and run it; raise BootstrapError (ConfigError for a bad model).

    `bundle` is the folder on the machine holding the gpurun package: with it the smoke check runs."""
    lock_dir = await ship_locks(transport, home)
    script = posixpath.join(home.rstrip("/"), "bootstrap.sh")
    args = bootstrap_args(
        home=home, lock_dir=lock_dir, bundle=bundle, model=model, model_files=model_files, model_file=model_file,
        model_sha256=model_sha256,
    )  # fmt: skip
    cmd = " ".join(shlex.quote(a) for a in ["bash", script, *args])
    seen: list[BootstrapLine] = []
    try:
        async for raw in transport.stream_lines(cmd, env=env):
            parsed = parse_line(raw)
            if parsed is None:
                continue
            seen.append(parsed)
            if on_line is not None:
                on_line(parsed)
    except CommandError as exc:
        failure = next((line for line in reversed(seen) if line.phase == "error"), None)
        message = failure.fields.get("message", "") if failure else tail(exc.stderr, 3)
        if exc.rc == 2 and failure is not None and "model" in message:
            raise ConfigError(message, where="--base") from None
        raise BootstrapError(
            f"bootstrap failed (exit {exc.rc}): {message}",
            code=exc.rc,
            last_lines=exc.stderr.strip().splitlines()[-20:],
            where=transport.where,
        ) from None
    ready = next((line for line in reversed(seen) if line.phase == "ready"), None)
    env_line = next((line for line in reversed(seen) if line.phase == "env"), None)
    if ready is None or env_line is None:
        raise BootstrapError("bootstrap ended without reporting ready", code=1, last_lines=[], where=transport.where)
    return BootstrapResult(
        python=ready.fields.get("python", ""),
        pythonpath=ready.fields.get("pythonpath", ""),
        model_path=ready.fields.get("model", ""),
        env_status=env_line.status,
        lines=tuple(seen),
    )
