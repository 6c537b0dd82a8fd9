"""The state of the user's providers, for `gpurun providers`: usable or why not, endpoints, where each key comes
from (masked), storing a key, and one cheap authenticated call per provider to prove a key works."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from gpurun.errors import ConfigError, GpurunError
from gpurun.provision.http import RetryPolicy, mask_secret
from gpurun.provision.registry import KEY_ENV, PROVIDER_NAMES, available_providers, base_urls, make_provider
from gpurun.settings import Settings, load_settings, save_settings, settings_path


def overview(settings: Settings | None = None) -> list[dict[str, Any]]:
    """One row per provider: {"name", "usable", "reason", "urls" | "hosts", "key_source", "key" (masked)}."""
    settings = settings if settings is not None else load_settings()
    status = available_providers(settings)
    rows = []
    for name in PROVIDER_NAMES:
        row: dict[str, Any] = {"name": name, "usable": status[name] is None, "reason": status[name]}
        if name in KEY_ENV:
            source = settings.api_key_source(name)
            key = settings.api_key(name)
            row["urls"] = base_urls(name, settings)
            row["key_source"] = None if source is None else (str(settings_path()) if source == "file" else source)
            row["key"] = mask_secret(key) if key else None
        else:
            row["hosts"] = list(base_urls(name, settings).values())
        rows.append(row)
    return rows


def key_env(name: str) -> str:
    """The environment variable `name`'s key is read from; ConfigError for a provider that takes no key."""
    if name not in KEY_ENV:
        raise ConfigError(f"{name!r} takes no API key", hint=f"one of: {', '.join(KEY_ENV)}")
    return KEY_ENV[name]


def save_api_key(name: str, key: str) -> tuple[Path, bool]:
    """Store `name`'s key in the settings file (0600), the other settings kept. Returns the file, and whether the
    environment's key will still win over it."""
    env = key_env(name)
    path = save_settings(load_settings().with_api_key(name, key))
    return path, bool(os.environ.get(env))


async def check(names: list[str]) -> list[dict[str, Any]]:
    """One cheap authenticated call per provider: {"name", "ok", "detail"} or {"name", "ok": False, "error"}."""
    settings = load_settings()

    async def one(name: str) -> dict[str, Any]:
        try:
            provider = make_provider(name, settings, retry=RetryPolicy(attempts=2, initial_wait=0.5, max_wait=2.0))
        except GpurunError as error:
            return {"name": name, "ok": False, "error": error}
        try:
            return {"name": name, "ok": True, "detail": await provider.check()}
        except GpurunError as error:
            return {"name": name, "ok": False, "error": error}
        finally:
            await provider.aclose()

    return list(await asyncio.gather(*(one(name) for name in names)))


def usable_names() -> list[str]:
    """The providers usable with the user's settings (no network call)."""
    return [name for name, reason in available_providers().items() if reason is None]
