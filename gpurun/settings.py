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

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator, model_validator

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
    """One provider's table in the settings file (`[<provider>]`): which tables may exist is the registry's to say
    (`gpurun.provision.registry.check_settings`)."""

    api_key: SecretStr | None = None
    #: API base URL override (the env var GPURUN_<PROVIDER>_URL wins)
    url: str | None = None
    #: a second endpoint where the provider has one (a GraphQL API beside REST; GPURUN_<PROVIDER>_GRAPHQL_URL wins)
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


#: the tables of the settings file that are not a provider's
_OWN_TABLES = ("ssh_hosts", "pricing")


class Settings(_Strict):
    #: `[<provider>]` tables: API key, URL overrides
    providers: dict[str, ProviderSettings] = Field(default_factory=dict)
    ssh_hosts: list[SshHostSettings] = Field(default_factory=list)
    pricing: PricingSettings = Field(default_factory=PricingSettings)

    @model_validator(mode="before")
    @classmethod
    def _provider_tables(cls, data: Any) -> Any:
        """The file has one top-level table per provider; they are gathered under `providers`."""
        if isinstance(data, dict) and "providers" not in data:
            tables = {k: v for k, v in data.items() if k not in _OWN_TABLES}
            data = {**{k: v for k, v in data.items() if k in _OWN_TABLES}, "providers": tables}
        return data

    def provider(self, name: str) -> ProviderSettings:
        """The `[name]` table (empty when the file has none)."""
        return self.providers.get(name) or ProviderSettings()

    def api_key(self, provider: str) -> str | None:
        """The key for `provider`: environment first (<PROVIDER>_API_KEY), then the file."""
        env = os.environ.get(f"{provider.upper()}_API_KEY")
        if env:
            return env
        section = self.providers.get(provider)
        if section is not None and section.api_key is not None:
            return section.api_key.get_secret_value()
        return None

    def api_key_source(self, provider: str) -> str | None:
        """Where `api_key(provider)` comes from: the env var's name, "file", or None when there is no key."""
        env = f"{provider.upper()}_API_KEY"
        if os.environ.get(env):
            return env
        section = self.providers.get(provider)
        if section is not None and section.api_key is not None:
            return "file"
        return None

    def with_api_key(self, provider: str, key: str) -> Settings:
        """These settings with `provider`'s key set (the other keys kept)."""
        table = self.provider(provider).model_copy(update={"api_key": SecretStr(key)})
        return self.model_copy(update={"providers": {**self.providers, provider: table}})

    def to_toml(self) -> str:
        """The settings as TOML, secrets included (for the 0600 settings file only); defaults left out."""
        data = self.model_dump(mode="python", exclude_defaults=True)
        lines: list[str] = []
        for name, values in sorted(data.get("providers", {}).items()):
            values = {key: value for key, value in values.items() if value is not None}
            if values:
                lines.append(f"[{name}]")
                lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
                lines.append("")
        efficiency = data.get("pricing", {}).get("efficiency", {})
        if efficiency:
            lines += ["[pricing.efficiency]"] + [f"{_toml_value(n)} = {_toml_value(v)}" for n, v in efficiency.items()]
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
