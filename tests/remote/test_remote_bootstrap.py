"""bootstrap.sh's environment step for real: the warm image (this venv is installed from the shipped lock), a cold
install of a lock from local wheels into a PYTHONPATH folder, the smoke check that catches a stack which cannot
train, and the client's `run_bootstrap` over SSH and locally."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpurun.errors import ConfigError
from gpurun.remote.bootstrap import BootstrapError, parse_line, run_bootstrap, script_text
from gpurun.remote.boxlock import load_lock
from gpurun.remote.transport import Transport
from tests.support.bootstrap_helpers import (
    PY_MINOR,
    SCRIPT,
    SHIPPED_LOCKS,
    bootstrap,
    build_wheel,
    by_phase,
    find_uv,
    write_lock,
)
from tests.support.env import REPO_ROOT
from tests.support.remote_helpers import transport_fixture  # noqa: F401  (the fixture)


def test_the_script_is_shipped_in_the_package() -> None:
    assert script_text() == SCRIPT.read_text()
    assert script_text().startswith("#!/usr/bin/env bash")


def test_progress_lines_parse() -> None:
    line = parse_line("GPURUN_BOOTSTRAP phase=model status=done path=/w/my\\ model.safetensors bytes=12 empty=''")
    assert line is not None and (line.phase, line.status) == ("model", "done")
    assert line.fields == {"path": "/w/my model.safetensors", "bytes": "12", "empty": ""}
    assert parse_line("Downloading... 45%") is None


# -- the environment ------------------------------------------------------------------------------------------


def test_this_venv_is_a_warm_image_for_the_shipped_lock_and_nothing_is_installed(tmp_path: Path) -> None:
    """Installed from the lock (as CI and the [train] extra do), this interpreter has every direct requirement at
    exactly the locked version: warm, used as it is, nothing installed, twice over."""
    for _ in range(2):
        started = time.monotonic()
        result = bootstrap("--home", str(tmp_path / "home"), "--lock-dir", str(SHIPPED_LOCKS))
        assert result.returncode == 0, result.stderr
        (env,) = by_phase(result, "env")
        assert env.status == "warm" and env.fields["python"] == sys.executable and env.fields["pythonpath"] == ""
        assert env.fields["lock"] == f"lock-py{PY_MINOR}.txt"
        lock = load_lock(PY_MINOR)
        assert f"transformers={lock.pins['transformers']}" in env.fields["stack"]
        assert not by_phase(result, "install") and not by_phase(result, "smoke")  # no --bundle: no smoke check
        ready = by_phase(result, "ready")[0]
        assert ready.fields["python"] == sys.executable and ready.fields["model"] == ""
        assert time.monotonic() - started < 60  # a probe, not an install (generous: this box is shared)
    assert not (tmp_path / "home" / "env").exists()


def test_the_cuda_probe_reports_the_image_torch(tmp_path: Path) -> None:
    result = bootstrap("--home", str(tmp_path / "h"), "--lock-dir", str(SHIPPED_LOCKS), env={"GPURUN_CHECK_CUDA": "1"})
    assert result.returncode == 0, result.stderr
    env = by_phase(result, "env")[0]
    assert env.fields["torch"].startswith("2.") and env.fields["cuda"] == "false"


def make_bare_python(tmp_path: Path) -> Path:
    """A python with nothing installed (no torch): a venv without pip or system site-packages."""
    folder = tmp_path / "bare"
    if not (folder / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    return folder / "bin" / "python"


def test_an_image_without_torch_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    bare = make_bare_python(tmp_path)
    result = bootstrap(
        "--home", str(tmp_path / "h"), "--lock-dir", str(SHIPPED_LOCKS), env={"GPURUN_PYTHON": str(bare)}
    )
    assert result.returncode == 3
    assert "lacks what gpurun never installs: torch" in result.stderr
    assert by_phase(result, "error")[0].fields["code"] == "3"


def test_a_python_without_a_lock_is_refused_naming_the_supported_ones(tmp_path: Path) -> None:
    locks = write_lock(tmp_path / "locks", {}, python="3.99")
    write_lock(locks, {}, python="3.98")
    result = bootstrap("--home", str(tmp_path / "h"), "--lock-dir", str(locks))
    assert result.returncode == 3
    assert f"is Python {PY_MINOR}, and gpurun's training stack is locked for Python 3.98 3.99 only" in result.stderr


@pytest.mark.skipif(find_uv() is None, reason="uv is a dev dependency (pip install uv)")
def test_a_cold_image_gets_exactly_the_lock_on_pythonpath_never_torch_and_it_is_cached(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # like peft or accelerate: a package that depends on torch, which must come from the image, never from here
    build_wheel(wheels, "gpurun-probe-stack", "1.2.0", ["torch>=2.0", "gpurun-probe-dep>=0.1"])
    build_wheel(wheels, "gpurun-probe-dep", "0.3.0", [])
    build_wheel(wheels, "gpurun-probe-dep", "0.4.0", [])  # newer, but the lock says 0.3.0
    locks = write_lock(tmp_path / "locks", {"gpurun-probe-stack": "1.2.0", "gpurun-probe-dep": "0.3.0"},
                       direct=["gpurun-probe-stack"])  # fmt: skip
    env = {
        "GPURUN_UV": str(find_uv()),
        "GPURUN_UV_ARGS": f"--no-index --find-links {wheels}",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "GPURUN_UV_INSTALLER_URL": "",  # never fall back to downloading uv from the internet here
    }
    home = tmp_path / "home"
    first = bootstrap("--home", str(home), "--lock-dir", str(locks), env=env)
    assert first.returncode == 0, first.stderr
    assert [line.status for line in by_phase(first, "install")] == ["start", "done"]
    env_line = by_phase(first, "env")[0]
    assert env_line.status == "installed"
    target = Path(env_line.fields["pythonpath"])
    assert target.parent == home / "env" and (target / ".gpurun-ready").exists()
    ready = by_phase(first, "ready")[0]
    assert ready.fields["python"] == sys.executable and ready.fields["pythonpath"] == str(target)
    check = subprocess.run(
        [sys.executable, "-c", "import gpurun_probe_stack, gpurun_probe_dep, torch;"
         "print(gpurun_probe_stack.VERSION, gpurun_probe_dep.VERSION, torch.__file__)"],
        capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(target)},
    )  # fmt: skip
    stack, dep, torch_file = check.stdout.split()
    assert (stack, dep) == ("1.2.0", "0.3.0")  # exactly the lock, not the newest wheel
    assert not torch_file.startswith(str(target))  # the image's torch, untouched
    assert not list(target.glob("torch*"))

    second = bootstrap("--home", str(home), "--lock-dir", str(locks), env=env)
    assert second.returncode == 0, second.stderr
    assert by_phase(second, "env")[0].status == "cached" and not by_phase(second, "install")

    # a lock the index cannot satisfy: a clear failure with its own exit code
    write_lock(locks, {"gpurun-probe-stack": "9.0.0"})
    broken = bootstrap("--home", str(home), "--lock-dir", str(locks), env=env)
    assert broken.returncode == 4
    assert f"installing the locked training stack (lock-py{PY_MINOR}.txt) failed" in broken.stderr


@pytest.mark.skipif(find_uv() is None, reason="uv is a dev dependency (pip install uv)")
def test_uv_itself_is_installed_with_pip_when_the_image_lacks_it(tmp_path: Path) -> None:
    """No uv on PATH: bootstrap installs it with `pip install --target HOME/uv`. The wheel here is a stand-in
    named uv whose script hands over to the real uv binary (the real wheel cannot be fetched offline)."""
    wheels = tmp_path / "wheels"
    shim = f'#!/bin/sh\nexec {find_uv()} "$@"\n'
    build_wheel(wheels, "uv", "0.0.1", [], extra={"uv-0.0.1.data/scripts/uv": shim})
    build_wheel(wheels, "gpurun-probe-dep", "0.3.0", [])
    locks = write_lock(tmp_path / "locks", {"gpurun-probe-dep": "0.3.0"})
    env = {
        "PATH": "/usr/bin:/bin",  # no uv in sight
        "GPURUN_PIP_ARGS": f"--no-index --find-links {wheels}",
        "GPURUN_UV_ARGS": f"--no-index --find-links {wheels}",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "GPURUN_UV_INSTALLER_URL": "",
    }
    home = tmp_path / "home"
    result = bootstrap("--home", str(home), "--lock-dir", str(locks), env=env)
    assert result.returncode == 0, result.stderr
    assert "installing uv into" in result.stderr
    assert os.access(home / "uv" / "bin" / "uv", os.X_OK)
    assert by_phase(result, "env")[0].status == "installed"


# -- the smoke check ------------------------------------------------------------------------------------------


def test_the_smoke_check_trains_one_lora_step_before_any_download_then_is_remembered(tmp_path: Path) -> None:
    home = tmp_path / "home"
    args = ("--home", str(home), "--lock-dir", str(SHIPPED_LOCKS), "--bundle", str(REPO_ROOT))
    first = bootstrap(*args, "--model", "tiny-sd")
    assert first.returncode == 0, first.stderr
    phases = [(line.phase, line.status) for line in by_phase(first, "env") + by_phase(first, "smoke")]
    assert phases == [("env", "warm"), ("smoke", "start"), ("smoke", "ok")]
    report = __import__("json").loads(by_phase(first, "smoke")[-1].fields["report"])
    assert report["device"] == "cpu" and report["lora_tensors_changed"] > 0
    second = bootstrap(*args)
    assert [line.status for line in by_phase(second, "smoke")] == ["cached"]


@pytest.mark.slow
def test_the_smoke_check_catches_transformers_refusing_this_peft_in_seconds(tmp_path: Path) -> None:
    """The failure a first rental hit: a floating install took transformers 5.25.0 with peft 0.21.2, and the runner
    died at LoRA injection after the base model download. A lock that pins that transformers is installed from
    the package index for real; the smoke check stops the bootstrap with the packages and versions named, before
    the model step (exit 6)."""
    lock = load_lock(PY_MINOR)
    if lock.pins.get("peft", "").startswith("0.21"):
        locks = write_lock(tmp_path / "locks", {"transformers": "5.25.0"})
    else:
        pytest.skip(f"the lock moved past peft 0.21 (now {lock.pins.get('peft')}); the pairing is no longer bad")
    started = time.monotonic()
    result = bootstrap(
        "--home", str(tmp_path / "home"), "--lock-dir", str(locks), "--bundle", str(REPO_ROOT),
        "--model", "https://example.invalid/model.safetensors",
    )  # fmt: skip
    assert result.returncode == 6, result.stderr[-3000:]
    error = by_phase(result, "error")[0].fields["message"]
    assert "the training stack cannot train on this machine" in error
    assert "The version of PEFT you are using is not compatible" in error
    assert "transformers=5.25.0" in error and f"peft={lock.pins['peft']}" in error
    assert not by_phase(result, "model")  # stopped before the download
    assert time.monotonic() - started < 300


# -- the client ------------------------------------------------------------------------------------------------


async def test_run_bootstrap_ships_the_locks_and_reports_over_both_transports(transport: Transport, tmp_path) -> None:
    seen = []
    home = tmp_path / "gpurun"
    result = await run_bootstrap(transport, home=str(home), env={"GPURUN_PYTHON": sys.executable}, on_line=seen.append)
    assert (result.python, result.pythonpath, result.model_path, result.env_status) == (sys.executable, "", "", "warm")
    assert [line.phase for line in seen] == ["env", "model", "ready"]
    assert os.access(home / "bootstrap.sh", os.X_OK)
    assert sorted(p.name for p in (home / "lock").iterdir()) == sorted(p.name for p in SHIPPED_LOCKS.glob("lock-*"))


async def test_run_bootstrap_reports_failures_with_their_meaning(transport: Transport, tmp_path: Path) -> None:
    env = {"GPURUN_PYTHON": sys.executable}
    with pytest.raises(ConfigError, match="cannot understand the model spec") as caught:
        await run_bootstrap(transport, home=str(tmp_path / "g"), model="not a model!", env=env)
    assert caught.value.where == "--base"
    bare = make_bare_python(tmp_path)
    with pytest.raises(BootstrapError) as failure:
        await run_bootstrap(transport, home=str(tmp_path / "g"), env={"GPURUN_PYTHON": str(bare)})
    assert failure.value.code == 3 and "torch" in failure.value.message
    assert (failure.value.hint or "").startswith("no usable python or PyTorch in the image (or no lock for its Python)")
    assert "the machine said: bootstrap: error: the image's python" in (failure.value.hint or "")
