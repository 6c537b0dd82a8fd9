"""Run `templates/bootstrap.sh` on the instance and read its progress lines; validate `--base` before renting.

The script prints `GPURUN_BOOTSTRAP phase=... status=... key=value` lines (values shell-quoted) on stdout;
everything else is for people. `run_bootstrap` ships the script, streams it, hands each progress line to a
callback, and returns the interpreter and model path the runner should use.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Literal

from gpurun.errors import ConfigError, RemoteError
from gpurun.remote.transport import CommandError, Transport, tail

MARKER = "GPURUN_BOOTSTRAP"
# The same shape bootstrap.sh accepts for a hub id: org/name, optionally followed by a file path in the repo.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9._-]+(/\S+)?$")
_EXIT_MEANING = {
    2: "bad arguments or model spec",
    3: "no usable python or PyTorch in the image",
    4: "installing the training environment failed",
    5: "the base model is missing or its download failed",
}

ModelKind = Literal["none", "url", "hub", "file"]


class BootstrapError(RemoteError):
    """bootstrap.sh failed; `code` is its exit code (see the script's header)."""

    def __init__(self, message: str, *, code: int, last_lines: list[str], where: str | None = None) -> None:
        super().__init__(message, where=where, hint=_EXIT_MEANING.get(code))
        self.code = code
        self.last_lines = last_lines


@dataclass(frozen=True, slots=True)
class BootstrapLine:
    phase: str
    status: str
    fields: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BootstrapResult:
    #: the interpreter that has the training stack (the image's python or gpurun's venv)
    python: str
    #: the base model on the instance; "" when none was asked for
    model_path: str
    #: warm (image had everything) | cached (venv from an earlier run) | installed
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


def model_kind(spec: str | None, *, local_exists: Callable[[str], bool] | None = None) -> ModelKind:
    """What bootstrap.sh will do with `spec`, decided before anything is rented; bad specs are ConfigError.

    `local_exists` says whether a path exists on this machine (a local file is uploaded, not downloaded)."""
    text = (spec or "").strip()
    if text in ("", "none", "tiny-sd"):
        return "none"
    if text.startswith(("http://", "https://")):
        return "url"
    if text.startswith("hub:"):
        if not _HUB_ID.match(text[4:]):
            raise ConfigError(f"not a hub id: {text[4:]!r}", where="--base", hint="expected org/name")
        return "hub"
    if local_exists is not None and local_exists(text):
        return "file"
    if text.startswith(("/", "./", "../", "~")):
        raise ConfigError(f"no such model file: {text}", where="--base")
    if _HUB_ID.match(text):
        return "hub"
    raise ConfigError(
        f"cannot understand the model {text!r}",
        where="--base",
        hint="give sd15/sdxl/sd2, a hub id (org/name), an https URL, or a .safetensors file",
    )


def bootstrap_args(
    *, home: str, model: str | None = None, model_file: str | None = None, model_sha256: str | None = None
) -> list[str]:
    args = ["--home", home]
    if model:
        args += ["--model", model]
    if model_file:
        args += ["--model-file", model_file]
    if model_sha256:
        args += ["--model-sha256", model_sha256]
    return args


async def run_bootstrap(
    transport: Transport,
    *,
    home: str,
    model: str | None = None,
    model_file: str | None = None,
    model_sha256: str | None = None,
    env: Mapping[str, str] | None = None,
    on_line: Callable[[BootstrapLine], None] | None = None,
) -> BootstrapResult:
    """Ship bootstrap.sh to `home` and run it; raise BootstrapError (ConfigError for a bad model spec)."""
    script = f"{home.rstrip('/')}/bootstrap.sh"
    await transport.put_text(script, script_text(), mode=0o755)
    args = bootstrap_args(home=home, model=model, model_file=model_file, model_sha256=model_sha256)
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
        model_path=ready.fields.get("model", ""),
        env_status=env_line.status,
        lines=tuple(seen),
    )
