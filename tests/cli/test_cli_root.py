"""The CLI root: fast help, version, no heavy imports, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.support.env import subprocess_env

HEAVY = ("torch", "diffusers", "transformers", "peft", "bitsandbytes", "accelerate", "safetensors")


def test_import_cli_loads_no_training_stack() -> None:
    code = f"import sys, json; import gpurun, gpurun.cli; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env(), check=True
    )
    assert json.loads(result.stdout) == []


def test_help_is_fast_and_loads_no_torch() -> None:
    # -X importtime lists every module the interpreter imported while running `gpurun --help`
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "gpurun", "--help"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
    )
    elapsed = time.perf_counter() - start
    assert result.returncode == 0, result.stderr
    assert "gpurun train" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert not imported & set(HEAVY), imported & set(HEAVY)
    assert elapsed < 5, f"--help took {elapsed:.2f}s"  # generous for a loaded CI box; typically ~0.3 s


def test_version(gpurun_cli) -> None:
    result = gpurun_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip().startswith("gpurun 0.")


def test_user_error_is_one_line_without_traceback(gpurun_cli, tmp_path) -> None:
    result = gpurun_cli("config", "check", str(tmp_path / "missing.toml"))
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "missing.toml" in lines[0] and "not found" in lines[0]
    assert "Traceback" not in result.stderr


def test_json_error_document(gpurun_cli, tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[training]\nnetwork_dimm = 8\n")
    result = gpurun_cli("config", "check", str(bad), "--json")
    assert result.returncode == 1
    doc = json.loads(result.stdout)
    assert doc["ok"] is False and doc["error"] == "ConfigError"
    assert "network_dimm" in doc["message"] and "network_dim" in doc["hint"]


def test_usage_error_exit_code(gpurun_cli) -> None:
    result = gpurun_cli("no-such-command")
    assert result.returncode == 2
    assert "No such command" in result.stderr


def test_python_dash_m_and_console_script_agree(gpurun_cli) -> None:
    from gpurun.cli import app

    assert app.info.name == "gpurun"
    assert gpurun_cli("--help").returncode == 0
