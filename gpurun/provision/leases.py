"""Which declared machines (own SSH hosts, this machine) a run is using: one small file per "instance".

Nothing is rented on these machines, but the orchestrator treats every provider alike: it creates, polls
until the instance is gone, and lists what is still in use. A lease file in the state dir makes `get` and
`list_instances` truthful across processes (a crashed client, `gpurun runs --all` later).
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from gpurun.settings import state_dir, write_private_file


class LeaseBook:
    """Lease records of one provider under `<state dir>/leases/<provider>/`."""

    def __init__(self, provider: str, root: Path | None = None) -> None:
        self.provider = provider
        self._root = root

    @property
    def folder(self) -> Path:
        # resolved lazily: GPURUN_STATE_DIR may change between construction and use (tests, library users)
        return (self._root or state_dir()) / "leases" / self.provider

    def _path(self, instance_id: str) -> Path:
        return self.folder / f"{quote(instance_id, safe='')}.json"

    def add(self, instance_id: str, record: dict[str, Any]) -> None:
        write_private_file(self._path(instance_id), json.dumps({**record, "created_at": time.time()}))

    def get(self, instance_id: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self._path(instance_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def remove(self, instance_id: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(instance_id))

    def ids(self) -> list[str]:
        if not self.folder.is_dir():
            return []
        return sorted(unquote(path.stem) for path in self.folder.glob("*.json"))
