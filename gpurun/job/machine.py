"""What the orchestrator does ON the training machine, one function per step: lay out the run's folder, ship the
gpurun bundle and the data, launch the runner detached, list its outputs. (The watchdog: `gpurun.job.watchdog`.)

Every function takes a `Transport` (SSH or local) and a `BoxLayout` naming the run's files there, so `gpurun
train`, `attach` and `cancel` drive the same steps. Nothing here knows which provider rented the machine.
"""

from __future__ import annotations

import json
import os
import posixpath
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from gpurun.errors import RunnerError, SyncError
from gpurun.job.bases import BaseSpec
from gpurun.job.bundle import BUNDLE_EXCLUDES, PACKAGE_DIR
from gpurun.remote.sync import push
from gpurun.remote.transport import CommandError, StartFailed, Transport, exit_path_for
from gpurun.trainconfig import TrainConfig

#: the runner's files inside the run folder on the machine
EVENTS = "events.jsonl"
STDERR = "runner.stderr"
PID = "runner.pid"
JOB_TOML = "job.toml"


@dataclass(frozen=True)
class BoxLayout:
    """Where a run lives on its machine. `root` is absolute; everything else is inside it."""

    root: str
    #: gpurun's per-machine home (environment venv, downloaded models), shared by runs on the same machine
    home: str
    python: str = "python3"
    #: the folder with the locked training stack, first on the runner's PYTHONPATH; "" on a warm image
    pythonpath: str = ""
    #: where the gpurun bundle is, when not in this run folder (a queue's job uses its machine's)
    bundle: str = ""

    def path(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    @property
    def out(self) -> str:
        return self.path("out")

    @property
    def events(self) -> str:
        return self.path(EVENTS)

    @property
    def pid(self) -> str:
        return self.path(PID)

    @property
    def done(self) -> str:
        return exit_path_for(self.pid)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


async def make_layout(transport: Transport, run_id: str, workdir: str | None) -> BoxLayout:
    """Create the run folder (`<workdir or home>/gpurun/<run_id>`) and return its absolute layout."""
    base = workdir.rstrip("/") if workdir else "."
    root = f"{base}/gpurun/{run_id}"
    await transport.makedirs(root)
    # both resolved from the login folder: gpurun's home (environment, models) is per machine, not per run
    quoted_base = shlex.quote(base)
    result = await transport.run(f"cd {quoted_base} && pwd && cd gpurun/{shlex.quote(run_id)} && pwd")
    absolute_base, absolute_root = result.stdout.strip().splitlines()[:2]
    return BoxLayout(root=absolute_root, home=f"{absolute_base}/.gpurun")


async def remote_clock(transport: Transport) -> float:
    """The machine's unix time: the watchdog's deadline is on its clock, not ours."""
    result = await transport.run("date +%s")
    return float(result.stdout.strip())


# ---- environment, data, launch --------------------------------------------------------------------------------


def model_spec(base: BaseSpec) -> str:
    """bootstrap.sh's --model for a base: none (built in), a URL, or a hub repo (or one file in it)."""
    if base.kind == "builtin":
        return "none"
    if base.kind == "url":
        return base.ref
    if base.kind == "hub":
        return f"{base.ref}/{base.filename}" if base.filename else base.ref
    raise ValueError("local base models are uploaded, not named to bootstrap")


def bootstrap_env() -> dict[str, str]:
    """Overrides passed through to bootstrap.sh (GPURUN_PYTHON, GPURUN_UV_ARGS, ...) from our environment."""
    names = (
        "GPURUN_PYTHON",
        "GPURUN_UV",
        "GPURUN_PIP_ARGS",
        "GPURUN_UV_ARGS",
        "GPURUN_UV_INSTALLER_URL",
        "GPURUN_CHECK_CUDA",
        "HF_ENDPOINT",
    )
    return {name: os.environ[name] for name in names if name in os.environ}


def local_python_env() -> dict[str, str]:
    """On this machine the environment is ours: the runner uses the interpreter running gpurun."""
    return {"GPURUN_PYTHON": sys.executable, **bootstrap_env()}


def bundle_dir(layout: BoxLayout) -> str:
    """The folder on the machine that holds the gpurun package (what goes on PYTHONPATH)."""
    return layout.bundle or layout.path("bundle")


async def ship_bundle(transport: Transport, layout: BoxLayout) -> int:
    """rsync (or SFTP) this exact gpurun package to the machine; returns bytes sent."""
    stats = await push(transport, PACKAGE_DIR, posixpath.join(bundle_dir(layout), "gpurun"), excludes=BUNDLE_EXCLUDES)
    return stats.bytes_sent


async def ship_dataset(transport: Transport, dataset: Path, dataset_dir: str, *, progress=None) -> int:
    """rsync (or SFTP) the dataset; returns bytes sent."""
    stats = await push(transport, dataset, dataset_dir, progress=progress)
    return stats.bytes_sent


async def upload_base_model(transport: Transport, layout: BoxLayout, base: BaseSpec) -> str:
    """A local base model goes up once per machine (models/ in gpurun's home); returns its path there."""
    source = Path(base.ref)
    target_dir = posixpath.join(layout.home, "models")
    if source.is_dir():
        target = posixpath.join(target_dir, source.name)
        await push(transport, source, target)
        return target
    target = posixpath.join(target_dir, source.name)
    stat = await transport.stat(target)
    if stat is None or stat.size != source.stat().st_size:
        await transport.makedirs(target_dir)
        await transport.put_file(source, target)
    return target


def job_config(config: TrainConfig, model_path: str, dataset_keys: dict[str, Any] | None = None) -> TrainConfig:
    """The config as the runner on the machine reads it: paths relative to the run folder (`dataset_keys`: where
    the images went, see job.datasets; data/ by default)."""
    return config.model_copy(
        update={
            "train_data_dir": "data",
            **(dataset_keys or {}),
            "output_dir": "out",
            "resume": False,
            "pretrained_model_name_or_path": model_path,
        }
    )


async def launch_runner(
    transport: Transport,
    layout: BoxLayout,
    config: TrainConfig,
    *,
    resume: bool = False,
    env: dict[str, str] | None = None,
) -> int:
    """Write job.toml and start the trainer (`python -m gpurun.runner`) detached; see `launch_module`."""
    return await launch_module(transport, layout, "gpurun.runner", JOB_TOML, config.to_toml(),
                               extra_args=("--resume",) if resume else (), env=env)  # fmt: skip


async def launch_module(
    transport: Transport,
    layout: BoxLayout,
    module: str,
    job_name: str,
    job_text: str,
    *,
    extra_args: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
) -> int:
    """Write the job file and start `python -m MODULE --config JOB` detached through the box helper, as the
    watchdog expects: it leads its own session and process group (so the whole group may be killed), its pid is
    in runner.pid, its exit code lands in runner.exit. stdout is the event stream; SIGTERM to the pid means
    "checkpoint and exit" (the runner's job). Returns the pid, once written: a follower started at once must not
    take the runner for dead."""
    await transport.put_text(layout.path(job_name), job_text)
    argv = [layout.python, "-m", module, "--config", job_name, *extra_args]
    # the bundle first (this exact gpurun), then the locked stack; the image's own site-packages come after
    pythonpath = ":".join(part for part in (bundle_dir(layout), layout.pythonpath) if part)
    run_env = {"PYTHONPATH": pythonpath, "PYTHONUNBUFFERED": "1", "PYTHONNOUSERSITE": "1", **(env or {})}
    try:
        return await transport.start_detached(
            argv, layout.pid, stdout=layout.events, stderr=layout.path(STDERR), append=False, env=run_env,
            cwd=layout.root,
        )  # fmt: skip
    except StartFailed as exc:
        what = f"the runner could not start (exit {exc.rc})"
    except CommandError as exc:
        what = f"the runner did not start: {exc.message}"
    lines = await stderr_tail(transport, layout)
    raise RunnerError(
        what,
        where=transport.where,
        last_lines=lines,
        hint=("its last lines: " + " | ".join(lines[-3:])) if lines else f"is {layout.python} on the machine?",
    )


async def stderr_tail(transport: Transport, layout: BoxLayout, lines: int = 20) -> list[str]:
    result = await transport.run(f"tail -n {lines} {shlex.quote(layout.path(STDERR))} 2>/dev/null", check=False)
    return [line for line in result.stdout.splitlines() if line.strip()]


async def remote_outputs(transport: Transport, layout: BoxLayout) -> dict[str, tuple[int, str]]:
    """Every file in the machine's out/ with its size and sha256 (for fetching what exists on cancel)."""
    script = (
        "import hashlib, json, os, sys\n"
        "root = sys.argv[1]; found = {}\n"
        "for dirpath, dirs, files in os.walk(root):\n"
        "    dirs[:] = [d for d in dirs if d not in ('state', '.cache')]\n"
        "    for name in files:\n"
        "        if name.endswith(('.safetensors', '.png')) and not name.startswith('.'):\n"
        "            path = os.path.join(dirpath, name); h = hashlib.sha256()\n"
        "            with open(path, 'rb') as f:\n"
        "                for chunk in iter(lambda: f.read(1 << 20), b''): h.update(chunk)\n"
        "            found[os.path.relpath(path, root)] = [os.path.getsize(path), h.hexdigest()]\n"
        "print(json.dumps(found))\n"
    )
    result = await transport.run(f"python3 -c {shlex.quote(script)} {shlex.quote(layout.out)}", check=False)
    if result.rc != 0:
        return {}
    try:
        return {k: (int(v[0]), str(v[1])) for k, v in json.loads(result.stdout or "{}").items()}
    except (ValueError, TypeError, IndexError):
        raise SyncError("could not list the run's outputs on the machine", where=transport.where) from None
