"""Launching the runner detached: `launch_runner` returns only once the runner has a pid file (a follower started
at once must not take it for dead), and a runner that cannot start is a clear error with its last lines."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from gpurun.errors import RunnerError
from gpurun.job import machine
from gpurun.remote.local_transport import LocalTransport
from gpurun.trainconfig import TrainConfig


async def _layout(tmp_path: Path, python: str) -> tuple[LocalTransport, machine.BoxLayout]:
    transport = LocalTransport(tmp_path)
    layout = await machine.make_layout(transport, "r-launch", str(tmp_path))
    bundle = Path(layout.path("bundle", "gpurun", "runner"))
    bundle.mkdir(parents=True)
    # a stand-in runner package: starts slowly (as torch imports do), then waits to be stopped
    (bundle.parent / "__init__.py").write_text("")
    (bundle / "__init__.py").write_text("")
    (bundle / "__main__.py").write_text("import time\ntime.sleep(1.0)\nprint('{\"type\": \"start\"}', flush=True)\n"
                                        "time.sleep(60)\n")  # fmt: skip
    return transport, machine.BoxLayout(root=layout.root, home=layout.home, python=python)


async def test_launch_returns_with_the_pid_written(tmp_path: Path) -> None:
    transport, layout = await _layout(tmp_path, sys.executable)
    await machine.launch_runner(transport, layout, TrainConfig())
    pid = int(Path(layout.pid).read_text().split()[0])
    try:
        assert await transport.is_running(layout.pid)
    finally:
        os.killpg(pid, signal.SIGKILL)


async def test_a_runner_that_cannot_start_is_a_clear_error(tmp_path: Path) -> None:
    transport, layout = await _layout(tmp_path, str(tmp_path / "no-such-python"))
    with pytest.raises(RunnerError) as info:
        await machine.launch_runner(transport, layout, TrainConfig())
    assert info.value.message == "the runner could not start (exit 127)"
    assert "not found" in (info.value.hint or "")  # the shell's own words, from the runner's stderr


@pytest.mark.parametrize("workdir", [None, "work"])
async def test_the_run_folder_is_per_run_and_gpurun_home_per_machine(tmp_path: Path, workdir: str | None) -> None:
    """Two runs on one machine share ~/.gpurun (the installed environment, downloaded models), never a run folder."""
    transport = LocalTransport(tmp_path)
    (tmp_path / "work").mkdir()
    first = await machine.make_layout(transport, "r-one", workdir)
    second = await machine.make_layout(transport, "r-two", workdir)
    base = tmp_path / (workdir or "")
    assert first.root == str(base / "gpurun" / "r-one") and second.root == str(base / "gpurun" / "r-two")
    assert first.home == second.home == str(base / ".gpurun")
