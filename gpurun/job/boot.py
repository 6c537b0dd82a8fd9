"""Arming the dead-man switch when the container starts, before any SSH.

A client can die while a host pulls the image (minutes, billed). So the watchdog does not wait for SSH: its
source, its box process helper and a boot config travel in the instance's environment, and a short shell script,
which the provider runs when the container starts (Vast's `onstart`, RunPod's start command), writes them into the
run's folder and starts it. The boot config cannot know the instance's id or the box's clock, so the provider's own
variables name the instance (`instance_id_env`, `token_env` in the provider's `self_destroy(None)` recipe), the
deadline counts from the watchdog's start (`deadline_in_s`), and the lease TTL bounds how long the client may take
to connect and adopt it. When the client connects it rewrites the config (watchdog.arm_watchdog) and the running
watchdog reloads it: one watchdog program, armed early, adopted later.
"""

from __future__ import annotations

import base64
import functools
import gzip
import json
import re
from typing import Any

from gpurun.job import watchdog as wd
from gpurun.remote.transport import compact_source

#: environment variables that carry the watchdog and its helper (gzip + base64 of their sources, see
#: `packed_source`) and its boot config (base64 JSON)
ENV_SOURCE = "GPURUN_WATCHDOG_PY"
ENV_HELPER = "GPURUN_BOXPROC_PY"
ENV_CONFIG = "GPURUN_WATCHDOG_CONFIG"
#: each file of the watchdog's, by its name in the run folder -> the variable that carries it
PACKED_FILES = {"watchdog.py": ENV_SOURCE, "boxproc.py": ENV_HELPER}
_RUN_ID = re.compile(r"^[a-z0-9]{4,40}$")


@functools.lru_cache(maxsize=4)
def packed_source(name: str = "watchdog.py") -> str:
    """One of the watchdog's files without docstrings and comments (it travels in an environment variable),
    gzipped, base64: about 10 kB for the watchdog and 4 kB for its helper, whose text is mostly documentation
    that stays in the package."""
    header = f"#!/usr/bin/env python3\n# gpurun's {name} (see gpurun/templates/{name})\n"
    source = header + compact_source(wd.PROGRAM_FILES[name].read_text(encoding="utf-8"))
    return base64.b64encode(gzip.compress(source.encode("utf-8"), 9, mtime=0)).decode("ascii")


def unpack_source(packed: str) -> str:
    """The text `packed_source` packed."""
    return gzip.decompress(base64.b64decode(packed)).decode("utf-8")


def boot_config(
    run_id: str,
    destroy: dict[str, Any],
    *,
    deadline_in_s: float | None,
    boot_lease_s: float,
    **options: Any,
) -> dict[str, Any]:
    """The config the watchdog starts with at container start, validated by the watchdog's own parser.

    `destroy` names the instance and its token through the provider's environment variables
    (`provision.*.self_destroy(None)`); `boot_lease_s` is how long the box waits for the client's first lease."""
    return wd.build_config(run_id, destroy, deadline=None, deadline_in_s=deadline_in_s, lease_ttl_s=boot_lease_s,
                           **options)  # fmt: skip


def boot_env(config: dict[str, Any]) -> dict[str, str]:
    """The environment variables the boot script reads: the watchdog's files and its config."""
    env = {variable: packed_source(name) for name, variable in PACKED_FILES.items()}
    env[ENV_CONFIG] = base64.b64encode(wd.config_json(config).encode("utf-8")).decode("ascii")
    return env


def boot_script(run_id: str) -> str:
    """Shell lines, run at container start, that write the watchdog and its helper into `$HOME/gpurun/<run_id>`
    (the folder machine.make_layout uses for a box without a workdir) and start it in the background. No single
    quotes, so a provider may wrap it in `bash -c '...'`; it returns at once."""
    if not _RUN_ID.match(run_id):
        raise ValueError(f"not a run id: {run_id!r}")
    # python's string quotes are escaped double quotes inside the shell's double-quoted -c argument
    files = "".join(
        f'open(\\"{name}\\",\\"wb\\").write(gzip.decompress(base64.b64decode(os.environ[\\"{variable}\\"])));'
        for name, variable in PACKED_FILES.items()
    )
    unpack = (
        f"import base64,gzip,os;os.umask(0o077);{files}"
        f'open(\\"{wd.CONFIG_NAME}\\",\\"wb\\").write(base64.b64decode(os.environ[\\"{ENV_CONFIG}\\"]))'
    )
    return (
        "# gpurun: arm the dead-man switch first, before anything slow (gpurun/job/boot.py)\n"
        f'gpurun_dir="${{HOME:-/root}}/gpurun/{run_id}"; '
        'gpurun_py="$(command -v python3 || command -v python)"; '
        f'mkdir -p "$gpurun_dir" && cd "$gpurun_dir" && "$gpurun_py" -c "{unpack}" && '
        f'nohup "$gpurun_py" watchdog.py --config {wd.CONFIG_NAME} >/dev/null 2>>watchdog.stderr </dev/null &\n'
    )


def config_from_env(env: dict[str, str]) -> dict[str, Any]:
    """The boot config an instance's environment carries (for checks and tests)."""
    return json.loads(base64.b64decode(env[ENV_CONFIG]))
