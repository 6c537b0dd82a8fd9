"""What the orchestrator does ON the training machine, one function per step: arm the watchdog, renew its
lease, install the environment, ship the data and the gpurun bundle, launch the runner detached, fetch files.

Every function takes a `Transport` (SSH or local) and a `BoxLayout` naming the run's files there, so `gpurun
train`, `attach` and `cancel` drive the same steps. Nothing here knows which provider rented the machine;
the watchdog's destroy action comes in ready-made from `destroy_action()`.
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

from gpurun import watchdog_client as wd
from gpurun.bases import BaseSpec
from gpurun.bundle import BUNDLE_EXCLUDES, PACKAGE_DIR
from gpurun.config import TrainConfig
from gpurun.errors import RunnerError, SyncError
from gpurun.models import Instance
from gpurun.remote.transport import Transport, exit_path_for

#: the runner's files inside the run folder on the machine
EVENTS = "events.jsonl"
STDERR = "runner.stderr"
PID = wd.PID_NAME
JOB_TOML = "job.toml"
#: how long the detached runner may take to write its pid file
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class BoxLayout:
    """Where a run lives on its machine. `root` is absolute; everything else is inside it."""

    root: str
    #: gpurun's per-machine home (environment venv, downloaded models), shared by runs on the same machine
    home: str
    python: str = "python3"

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
    result = await transport.run(f"cd {shlex.quote(root)} && pwd && cd {shlex.quote(base)} && pwd")
    absolute_root, absolute_base = result.stdout.strip().splitlines()[:2]
    return BoxLayout(root=absolute_root, home=f"{absolute_base}/.gpurun")


# ---- the watchdog ---------------------------------------------------------------------------------------------


def destroy_action(provider: str, instance: Instance, urls: dict[str, str]) -> dict[str, Any]:
    """How the watchdog ends this machine: the provider's DELETE with the instance-scoped key, or `kill`.

    `urls` is `provision.registry.base_urls(provider, settings)`: {"api"} for Vast, {"rest", "graphql"} for RunPod.
    """
    if provider == "vast":
        action: dict[str, Any] = {"kind": "vast", "url": urls["api"], "instance_id": instance.instance_id}
        if instance.self_destroy_token:
            action["token"] = instance.self_destroy_token
        else:  # a create recovered by label has no key in hand; Vast puts it in the container as CONTAINER_API_KEY
            action["token_env"] = "CONTAINER_API_KEY"
        return action
    if provider == "runpod":
        # RunPod gives every pod its own pod-scoped RUNPOD_API_KEY; the user's key never goes to the pod
        action = {"kind": "runpod", "url": urls["rest"], "instance_id": instance.instance_id}
        if instance.self_destroy_token:
            action["token"] = instance.self_destroy_token
        else:
            action["token_env"] = "RUNPOD_API_KEY"
        if urls.get("graphql"):
            action["graphql_url"] = urls["graphql"]
        return action
    return {"kind": "kill"}


async def arm_watchdog(
    transport: Transport,
    layout: BoxLayout,
    run_id: str,
    destroy: dict[str, Any],
    *,
    deadline: float | None,
    lease_ttl_s: float,
    artifact_grace_s: float,
    poll_s: float,
) -> None:
    """Upload and start the dead-man switch, then renew its lease once so it starts with a fresh one."""
    config = wd.build_config(
        run_id,
        destroy,
        deadline=deadline,
        lease_ttl_s=lease_ttl_s,
        artifact_grace_s=artifact_grace_s,
        poll_s=poll_s,
        done_file=Path(layout.done).name,
    )
    await transport.put_text(layout.path("watchdog.py"), wd.SOURCE.read_text(encoding="utf-8"), mode=0o755)
    await transport.put_text(layout.path(wd.CONFIG_NAME), wd.config_json(config), mode=0o600)
    await renew_lease(transport, layout, run_id, 0)
    await transport.run(wd.start_command(layout.root, python="python3"))


async def renew_lease(transport: Transport, layout: BoxLayout, run_id: str, seq: int) -> None:
    await transport.run(wd.lease_command(layout.root, run_id, seq))


async def stop_watchdog(transport: Transport, layout: BoxLayout) -> None:
    """Disarm (SIGTERM stops it between checks): for runs on machines gpurun does not destroy."""
    lock = shlex.quote(layout.path("watchdog.pid"))
    await transport.run(f"if [ -s {lock} ]; then kill $(cat {lock}) 2>/dev/null || true; fi", check=False)


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
        "GPURUN_REQUIREMENTS",
        "GPURUN_UV_INSTALLER_URL",
        "HF_ENDPOINT",
    )
    return {name: os.environ[name] for name in names if name in os.environ}


def local_python_env() -> dict[str, str]:
    """On this machine the environment is ours: the runner uses the interpreter running gpurun."""
    return {"GPURUN_PYTHON": sys.executable, **bootstrap_env()}


def dataset_target(
    layout: BoxLayout, dataset: Path, report: dict[str, Any], repeats: int | None, trigger: str | None
) -> str:
    """Where the dataset goes so the machine always sees a kohya root (`data/N_name/...`)."""
    kind = report.get("layout", "kohya-root")
    if kind == "concept-folder":
        return layout.path("data", dataset.name)
    if kind == "plain":
        name = trigger or dataset.name
        return layout.path("data", f"{repeats or 1}_{name}")
    return layout.path("data")


async def ship(transport: Transport, layout: BoxLayout, dataset: Path, dataset_dir: str, *, progress=None) -> int:
    """rsync (or SFTP) the dataset and the gpurun bundle; returns bytes sent."""
    from gpurun.remote.sync import push

    sent = 0
    stats = await push(transport, dataset, dataset_dir, progress=progress)
    sent += stats.bytes_sent
    stats = await push(transport, PACKAGE_DIR, layout.path("bundle", "gpurun"), excludes=BUNDLE_EXCLUDES)
    sent += stats.bytes_sent
    return sent


async def upload_base_model(transport: Transport, layout: BoxLayout, base: BaseSpec) -> str:
    """A local base model goes up once per machine (models/ in gpurun's home); returns its path there."""
    source = Path(base.ref)
    target_dir = posixpath.join(layout.home, "models")
    if source.is_dir():
        from gpurun.remote.sync import push

        target = posixpath.join(target_dir, source.name)
        await push(transport, source, target)
        return target
    target = posixpath.join(target_dir, source.name)
    stat = await transport.stat(target)
    if stat is None or stat.size != source.stat().st_size:
        await transport.makedirs(target_dir)
        await transport.put_file(source, target)
    return target


def job_config(config: TrainConfig, model_path: str) -> TrainConfig:
    """The config as the runner on the machine reads it: paths relative to the run folder."""
    return config.model_copy(
        update={
            "train_data_dir": "data",
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
) -> None:
    """Write job.toml and start `python -m gpurun.runner` detached, as the watchdog expects (pid, exit file)."""
    await transport.put_text(layout.path(JOB_TOML), config.to_toml())
    argv = [layout.python, "-m", "gpurun.runner", "--config", JOB_TOML]
    if resume:
        argv.append("--resume")
    run_env = {"PYTHONPATH": layout.path("bundle"), "PYTHONUNBUFFERED": "1", **(env or {})}
    command = wd.runner_launch_command(
        layout.root, argv, python=layout.python, events=EVENTS, stderr=STDERR, env=run_env, done=Path(layout.done).name
    )
    await transport.run(command)
    # The launch returns before the detached runner has written its pid; a follower started in that gap would
    # take the runner for dead. Wait (on the machine, one round trip) for the pid file, or the exit file of a
    # runner that died at once.
    pid, done = shlex.quote(layout.pid), shlex.quote(layout.done)
    started = await transport.run(
        f"i=0; while [ ! -s {pid} ] && [ ! -e {done} ] && [ $i -lt {int(START_TIMEOUT_S * 10)} ]; do "
        f"sleep 0.1; i=$((i+1)); done; if [ -s {pid} ]; then echo started; elif [ -e {done} ]; then "
        f"echo exited $(cat {done}); fi",
        check=False,
    )
    status = started.stdout.strip()
    if status != "started":
        lines = await stderr_tail(transport, layout)
        what = (
            f"the runner could not start ({status.replace('exited', 'exit')})"
            if status.startswith("exited")
            else f"the runner did not start within {START_TIMEOUT_S:.0f} s"
        )
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
