"""User settings: where gpurun keeps its files, the providers' API keys, and the user's own SSH hosts.

The settings file is `<config dir>/config.toml` (created 0600). API keys come from `VAST_API_KEY` /
`RUNPOD_API_KEY` first (the names the official tools use), then from the file. Keys are SecretStr so they
never appear in reprs or logs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from gpurun.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def config_dir() -> Path:
    """`$GPURUN_CONFIG_DIR`, else `$XDG_CONFIG_HOME/gpurun`, else `~/.config/gpurun`."""
    if os.environ.get("GPURUN_CONFIG_DIR"):
        return Path(os.environ["GPURUN_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "gpurun"


def state_dir() -> Path:
    """`$GPURUN_STATE_DIR`, else `$XDG_STATE_HOME/gpurun`, else `~/.local/state/gpurun`: journal, run keys."""
    if os.environ.get("GPURUN_STATE_DIR"):
        return Path(os.environ["GPURUN_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gpurun"


def settings_path() -> Path:
    return config_dir() / "config.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderSettings(_Strict):
    api_key: SecretStr | None = None
    #: API base URL override (the env var GPURUN_<PROVIDER>_URL wins)
    url: str | None = None


class RunpodSettings(ProviderSettings):
    #: GraphQL endpoint override (GPURUN_RUNPOD_GRAPHQL_URL wins); `url` is the REST v2 base
    graphql_url: str | None = None


class SshHostSettings(_Strict):
    """A machine the user declares: any box reachable over SSH (own workstation, Lambda, GPUFlow)."""

    name: str
    host: str
    port: int = Field(default=22, ge=1, le=65535)
    user: str = "root"
    #: private key file; None = the per-run key gpurun generates (then add its .pub to the host)
    key: str | None = None
    gpu: str = "unknown"
    gpu_count: int = Field(default=1, ge=1)
    vram_gb: float | None = Field(default=None, gt=0)
    price_per_hour: float = Field(default=0.0, ge=0)
    workdir: str | None = None
    location: str = ""


class PricingSettings(_Strict):
    #: per-GPU-name efficiency (fraction of peak FLOP/s the runner reaches), overriding the built-in table
    efficiency: dict[str, float] = Field(default_factory=dict)

    @field_validator("efficiency")
    @classmethod
    def _fractions(cls, value: dict[str, float]) -> dict[str, float]:
        for name, fraction in value.items():
            if not (math.isfinite(fraction) and 0 < fraction <= 1):
                raise ValueError(f"{name}: an efficiency is a fraction of peak above 0 and at most 1, got {fraction}")
        return value


class Settings(_Strict):
    vast: ProviderSettings = Field(default_factory=ProviderSettings)
    runpod: RunpodSettings = Field(default_factory=RunpodSettings)
    ssh_hosts: list[SshHostSettings] = Field(default_factory=list)
    pricing: PricingSettings = Field(default_factory=PricingSettings)

    def api_key(self, provider: str) -> str | None:
        """The key for `provider`: environment first (VAST_API_KEY, RUNPOD_API_KEY), then the file."""
        env = os.environ.get(f"{provider.upper()}_API_KEY")
        if env:
            return env
        section = getattr(self, provider, None)
        if isinstance(section, ProviderSettings) and section.api_key is not None:
            return section.api_key.get_secret_value()
        return None

    def api_key_source(self, provider: str) -> str | None:
        """Where `api_key(provider)` comes from: the env var's name, "file", or None when there is no key."""
        env = f"{provider.upper()}_API_KEY"
        if os.environ.get(env):
            return env
        section = getattr(self, provider, None)
        if isinstance(section, ProviderSettings) and section.api_key is not None:
            return "file"
        return None

    def to_toml(self) -> str:
        """The settings as TOML, secrets included (for the 0600 settings file only); defaults left out."""
        data = self.model_dump(mode="python", exclude_defaults=True)
        lines: list[str] = []
        for section in ("vast", "runpod", "pricing"):
            values = data.get(section)
            if not values:
                continue
            if section == "pricing":
                lines += ["[pricing.efficiency]"] + [
                    f"{_toml_value(name)} = {_toml_value(v)}" for name, v in values.get("efficiency", {}).items()
                ]
            else:
                lines.append(f"[{section}]")
                lines += [f"{key} = {_toml_value(value)}" for key, value in values.items() if value is not None]
            lines.append("")
        for host in data.get("ssh_hosts", []):
            lines.append("[[ssh_hosts]]")
            lines += [f"{key} = {_toml_value(value)}" for key, value in host.items() if value is not None]
            lines.append("")
        return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        # a JSON string is a valid TOML basic string (same escapes, \uXXXX for control characters)
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {type(value).__name__} to the settings file")


def save_settings(settings: Settings, path: Path | None = None) -> Path:
    """Write the settings file (0600); the caller started from `load_settings`, so other keys are kept."""
    path = path or settings_path()
    write_private_file(path, settings.to_toml())
    return path


def load_settings(path: Path | None = None) -> Settings:
    """Read the settings file; a missing file means defaults. Errors name the file and the key."""
    path = path or settings_path()
    if not path.exists():
        return Settings()
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read settings: {exc}", where=str(path)) from None
    except RecursionError:
        raise ConfigError("cannot read settings: nested too deeply", where=str(path)) from None
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(first["msg"], where=f"{path}: {key}", hint="fix or remove this key") from None


def write_private_file(path: Path, text: str) -> None:
    """Write a file readable only by the user (0600), creating its folder; never briefly world-readable, and
    atomic: the new text goes to a fresh 0600 file that replaces the old one only once it is complete on disk, so
    a full disk or a crash leaves the previous file (and its other keys) as it was."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
