"""bootstrap.sh for real: the warm environment here, a cold install from local wheels, the model step."""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from gpurun.errors import ConfigError
from gpurun.remote.bootstrap import BootstrapError, model_kind, parse_line, run_bootstrap, script_text
from gpurun.remote.transport import Transport
from tests.remote_helpers import transport_fixture  # noqa: F401  (the fixture)

SCRIPT = Path(__file__).resolve().parent.parent / "gpurun" / "templates" / "bootstrap.sh"
# model-step tests need no package checks: an empty requirement list makes the environment phase trivial
NO_PACKAGES = {"GPURUN_REQUIREMENTS": "", "GPURUN_SYSTEM_REQUIREMENTS": ""}


def bootstrap(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "GPURUN_PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=full_env, timeout=timeout)


def progress(result: subprocess.CompletedProcess[str]) -> list:
    return [line for line in map(parse_line, result.stdout.splitlines()) if line is not None]


def by_phase(result: subprocess.CompletedProcess[str], phase: str):
    return [line for line in progress(result) if line.phase == phase]


def test_the_script_is_shipped_in_the_package() -> None:
    assert script_text() == SCRIPT.read_text()
    assert script_text().startswith("#!/usr/bin/env bash")


def test_progress_lines_parse() -> None:
    line = parse_line("GPURUN_BOOTSTRAP phase=model status=done path=/w/my\\ model.safetensors bytes=12 empty=''")
    assert line is not None and (line.phase, line.status) == ("model", "done")
    assert line.fields == {"path": "/w/my model.safetensors", "bytes": "12", "empty": ""}
    assert parse_line("Downloading... 45%") is None


def test_model_specs_are_classified_before_renting(tmp_path: Path) -> None:
    local = tmp_path / "m.safetensors"
    local.write_bytes(b"x")
    exists = lambda p: Path(p).exists()  # noqa: E731
    assert model_kind(None) == model_kind("none") == model_kind("tiny-sd") == "none"
    assert model_kind("https://example.org/v1-5.safetensors") == "url"
    assert model_kind("stabilityai/stable-diffusion-xl-base-1.0") == "hub"
    assert model_kind("hub:org/name/unet/x.safetensors") == "hub"
    assert model_kind(str(local), local_exists=exists) == "file"
    with pytest.raises(ConfigError, match="no such model file"):
        model_kind(str(tmp_path / "missing.safetensors"), local_exists=exists)
    with pytest.raises(ConfigError, match="cannot understand"):
        model_kind("ftp://host/model")
    with pytest.raises(ConfigError, match="not a hub id"):
        model_kind("hub:just-a-name")


# -- the environment -----------------------------------------------------------------------------------------


def test_warm_environment_is_detected_and_nothing_is_installed_twice(tmp_path: Path) -> None:
    """This machine's venv has the whole training stack, like a warm instance: exit 0, no install."""
    for _ in range(2):
        started = time.monotonic()
        result = bootstrap("--home", str(tmp_path / "home"))
        elapsed = time.monotonic() - started
        assert result.returncode == 0, result.stderr
        env = by_phase(result, "env")
        assert [line.status for line in env] == ["warm"]
        assert env[0].fields["python"] == sys.executable
        assert env[0].fields["torch"].startswith("2.") and env[0].fields["cuda"] == "false"
        assert not by_phase(result, "install")
        ready = by_phase(result, "ready")[0]
        assert ready.fields["python"] == sys.executable and ready.fields["model"] == ""
        assert elapsed < 60  # no install: just a probe (generous: this box is shared)
    assert not (tmp_path / "home" / "venv").exists()


def test_the_cuda_probe_can_be_skipped_for_a_sub_second_warm_check(tmp_path: Path) -> None:
    result = bootstrap("--home", str(tmp_path / "home"), env={"GPURUN_CHECK_CUDA": "0"})
    assert result.returncode == 0, result.stderr
    env = by_phase(result, "env")[0]
    assert env.status == "warm" and env.fields["cuda"] == "" and env.fields["torch"].startswith("2.")


async def test_run_bootstrap_over_both_transports(transport: Transport, tmp_path: Path) -> None:
    seen = []
    result = await run_bootstrap(
        transport, home=str(tmp_path / "gpurun"), env={"GPURUN_PYTHON": sys.executable}, on_line=seen.append
    )
    assert (result.python, result.model_path, result.env_status) == (sys.executable, "", "warm")
    assert [line.phase for line in seen] == ["env", "model", "ready"]
    assert os.access(tmp_path / "gpurun" / "bootstrap.sh", os.X_OK)


async def test_run_bootstrap_reports_failures_with_their_meaning(transport: Transport, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot understand the model spec") as caught:
        await run_bootstrap(transport, home=str(tmp_path / "g"), model="not a model!", env=NO_PACKAGES)
    assert caught.value.where == "--base"
    bare = make_bare_python(tmp_path)
    with pytest.raises(BootstrapError) as failure:
        await run_bootstrap(transport, home=str(tmp_path / "g"), env={"GPURUN_PYTHON": str(bare)})
    assert failure.value.code == 3 and "torch" in failure.value.message
    assert failure.value.hint == "no usable python or PyTorch in the image"


def make_bare_python(tmp_path: Path) -> Path:
    """A python with nothing installed (no torch): a venv without pip or system site-packages."""
    folder = tmp_path / "bare"
    if not (folder / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True, timeout=120)
    return folder / "bin" / "python"


def test_an_image_without_torch_is_refused_with_a_clear_message(tmp_path: Path) -> None:
    result = bootstrap("--home", str(tmp_path / "home"), env={"GPURUN_PYTHON": str(make_bare_python(tmp_path))})
    assert result.returncode == 3
    assert "lacks what gpurun never installs: torch" in result.stderr
    assert by_phase(result, "error")[0].fields["code"] == "3"


def build_wheel(
    folder: Path, name: str, version: str, requires: list[str], extra: dict[str, str] | None = None
) -> None:
    """A minimal pure-python wheel, so the cold install runs with `--no-index` and no network."""
    module, dist = name.replace("-", "_"), f"{name.replace('-', '_')}-{version}"
    files = {
        **(extra or {}),
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: gpurun-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{dist}.dist-info/RECORD"] = "\n".join([*record, f"{dist}.dist-info/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            info = zipfile.ZipInfo(path)
            mode = 0o755 if ".data/scripts/" in path else 0o644
            info.external_attr = (stat.S_IFREG | mode) << 16  # pip keeps executable bits of regular files
            wheel.writestr(info, text)


def find_uv() -> str | None:
    beside = Path(sys.executable).parent / "uv"
    return str(beside) if beside.exists() else shutil.which("uv")


@pytest.mark.skipif(find_uv() is None, reason="uv is a dev dependency (pip install uv)")
def test_cold_install_with_uv_from_local_wheels_never_installs_torch_and_is_cached(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    # like peft or accelerate: a package that depends on torch, which must come from the image, never from here
    build_wheel(wheels, "gpurun-probe-stack", "1.2.0", ["torch>=2.0", "gpurun-probe-dep>=0.1"])
    build_wheel(wheels, "gpurun-probe-dep", "0.3.0", [])
    env = {
        "GPURUN_UV": str(find_uv()),
        "GPURUN_UV_ARGS": f"--no-index --find-links {wheels}",
        "GPURUN_REQUIREMENTS": "gpurun-probe-stack>=1.0",
        "GPURUN_SYSTEM_REQUIREMENTS": "",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "GPURUN_UV_INSTALLER_URL": "",  # never fall back to downloading uv from the internet here
    }
    home = tmp_path / "home"
    first = bootstrap("--home", str(home), env=env)
    assert first.returncode == 0, first.stderr
    assert [line.status for line in by_phase(first, "install")] == ["start", "done"]
    assert by_phase(first, "env")[0].status == "installed"
    venv_python = home / "venv" / "bin" / "python"
    assert by_phase(first, "ready")[0].fields["python"] == str(venv_python)
    check = subprocess.run(
        [str(venv_python), "-c", "import gpurun_probe_stack, gpurun_probe_dep, importlib.util as u;"
         "print(gpurun_probe_stack.VERSION, u.find_spec('torch') is None)"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert check.stdout.split() == ["1.2.0", "True"]  # installed, and no torch came along
    assert 'torch; sys_platform == "never"' in (home / "overrides.txt").read_text()
    assert list((home / "venv").glob(".gpurun-ready-*"))

    second = bootstrap("--home", str(home), env=env)
    assert second.returncode == 0, second.stderr
    assert by_phase(second, "env")[0].status == "cached" and not by_phase(second, "install")

    # a requirement the wheels cannot satisfy: a clear failure with its own exit code
    broken = bootstrap("--home", str(home), env={**env, "GPURUN_REQUIREMENTS": "gpurun-probe-stack>=9"})
    assert broken.returncode == 4
    assert "installing the training stack failed" in broken.stderr


# -- arguments and the model step ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--frobnicate"], 2, "unknown argument: --frobnicate"),
        (["--home"], 2, "--home needs a folder"),
        (["--model", "not a model!"], 2, "cannot understand the model spec 'not a model!'"),
        (["--model", "ftp://example.org/model.ckpt"], 2, "cannot understand the model spec"),
        (["--model", "hub:nope"], 2, "not a hub id: nope"),
        (["--model", "/does/not/exist.safetensors"], 5, "is not on this machine"),
    ],
)
def test_bad_arguments_fail_clearly(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    result = bootstrap("--home", str(tmp_path / "home"), *args, env=NO_PACKAGES)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    error = by_phase(result, "error")[0]
    assert error.fields["code"] == str(code) and message in error.fields["message"]


def test_a_local_model_file_is_checked_not_downloaded(tmp_path: Path) -> None:
    model = tmp_path / "uploaded model.safetensors"
    model.write_bytes(b"\x00" * 1234)
    result = bootstrap("--home", str(tmp_path / "home"), "--model", str(model), env=NO_PACKAGES)
    assert result.returncode == 0, result.stderr
    step = by_phase(result, "model")[0]
    assert (step.status, step.fields["path"], step.fields["bytes"]) == ("exists", str(model), "1234")
    assert by_phase(result, "ready")[0].fields["model"] == str(model)
    model.write_bytes(b"")
    empty = bootstrap("--home", str(tmp_path / "home"), "--model", str(model), env=NO_PACKAGES)
    assert empty.returncode == 5 and "is empty" in empty.stderr


def test_a_hub_model_without_network_fails_with_a_hint(tmp_path: Path) -> None:
    result = bootstrap(
        "--home", str(tmp_path / "home"), "--model", "org/some-model", env={**NO_PACKAGES, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 5
    assert "downloading org/some-model from the Hugging Face hub failed" in result.stderr


class _Files(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; with `ranges` it honours `Range: bytes=N-` like real CDNs (http.server does not)."""

    ranges: ClassVar[bool] = True
    seen_ranges: ClassVar[list[str]] = []

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        return

    def do_GET(self) -> None:
        header = self.headers.get("Range")
        path = Path(self.translate_path(self.path))
        if not (self.ranges and header and path.is_file()):
            return super().do_GET()
        type(self).seen_ranges.append(header)
        start = int(header.split("=")[1].split("-")[0])
        data = path.read_bytes()
        if start >= len(data):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(data)}")
            self.end_headers()
            return
        self.send_response(206)
        self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        self.wfile.write(data[start:])


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[tuple[str, Path, type[_Files]]]:
    root = tmp_path / "www"
    root.mkdir()
    handler = type("Handler", (_Files,), {"seen_ranges": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root, handler
    finally:
        server.shutdown()
        server.server_close()


def test_url_download_then_resume_then_reuse(tmp_path: Path, http_files) -> None:
    base, root, handler = http_files
    payload = os.urandom(300_000)
    (root / "v1-5-pruned.safetensors").write_bytes(payload)
    home = tmp_path / "home"
    url = f"{base}/v1-5-pruned.safetensors?download=true"

    fresh = bootstrap("--home", str(home), "--model", url, env=NO_PACKAGES)
    assert fresh.returncode == 0, fresh.stderr
    dest = home / "models" / "v1-5-pruned.safetensors"
    assert dest.read_bytes() == payload
    done = by_phase(fresh, "model")[-1]
    assert (done.status, done.fields["path"], done.fields["bytes"]) == ("done", str(dest), "300000")

    again = bootstrap("--home", str(home), "--model", url, env=NO_PACKAGES)
    assert by_phase(again, "model")[0].status == "exists" and again.returncode == 0

    # an interrupted earlier download left the first half: curl resumes with a Range request
    dest.unlink()
    (home / "models" / "v1-5-pruned.safetensors.part").write_bytes(payload[:120_000])
    digest = hashlib.sha256(payload).hexdigest()
    resumed = bootstrap("--home", str(home), "--model", url, "--model-sha256", digest, env=NO_PACKAGES)
    assert resumed.returncode == 0, resumed.stderr
    assert handler.seen_ranges == ["bytes=120000-"]
    assert dest.read_bytes() == payload and not (home / "models" / "v1-5-pruned.safetensors.part").exists()


def test_url_download_restarts_when_the_server_cannot_resume(tmp_path: Path, http_files) -> None:
    base, root, handler = http_files
    handler.ranges = False  # plain http.server: ignores Range, so curl reports exit 33
    payload = os.urandom(50_000)
    (root / "model").write_bytes(payload)
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "custom.safetensors.part").write_bytes(b"stale start")
    result = bootstrap(
        "--home", str(home), "--model", f"{base}/model", "--model-file", "custom.safetensors", env=NO_PACKAGES
    )
    assert result.returncode == 0, result.stderr
    assert (home / "models" / "custom.safetensors").read_bytes() == payload


def test_url_download_failures(tmp_path: Path, http_files) -> None:
    base, root, _ = http_files
    (root / "m.safetensors").write_bytes(b"real bytes")
    home = tmp_path / "home"
    missing = bootstrap("--home", str(home), "--model", f"{base}/nope.safetensors", env=NO_PACKAGES)
    assert missing.returncode == 5 and "curl exit 22" in missing.stderr
    wrong = bootstrap(
        "--home", str(home), "--model", f"{base}/m.safetensors", "--model-sha256", "0" * 64, env=NO_PACKAGES
    )
    assert wrong.returncode == 5 and "does not match --model-sha256" in wrong.stderr
    assert not (home / "models" / "m.safetensors").exists() and not (home / "models" / "m.safetensors.part").exists()


FAKE_HUB = '''
"""Stands in for huggingface_hub: a fixed repo listing; records what bootstrap.sh asks to download."""
import json, os
LISTING = json.loads(os.environ["FAKE_HUB_LISTING"])
LOG = os.environ["FAKE_HUB_LOG"]

def _record(kind, **data):
    with open(LOG, "a") as handle:
        handle.write(json.dumps({"kind": kind, **data}) + "\\n")

class HfApi:
    def list_repo_files(self, repo):
        return LISTING

def hf_hub_download(repo, filename, local_dir):
    _record("file", repo=repo, filename=filename, local_dir=local_dir)
    path = os.path.join(local_dir, filename)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").write(b"weights")
    return path

def snapshot_download(repo, allow_patterns, local_dir):
    _record("snapshot", repo=repo, allow_patterns=sorted(allow_patterns), local_dir=local_dir)
    os.makedirs(local_dir, exist_ok=True)
    open(os.path.join(local_dir, "model_index.json"), "w").write("{}")
    return local_dir
'''

SD15_LISTING = [
    ".gitattributes", "README.md", "model_index.json", "v1-5-pruned-emaonly.safetensors", "v1-5-pruned.ckpt",
    "feature_extractor/preprocessor_config.json",
    "safety_checker/config.json", "safety_checker/model.safetensors", "safety_checker/model.fp16.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json", "text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors",
    "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "unet/config.json", "unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.non_ema.safetensors", "unet/diffusion_pytorch_model.bin",
    "vae/config.json", "vae/diffusion_pytorch_model.safetensors",
]  # fmt: skip


def fake_hub(tmp_path: Path, listing: list[str]) -> tuple[dict[str, str], Path]:
    package = tmp_path / "fakehub" / "huggingface_hub"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_HUB)
    log = tmp_path / "hub-log.jsonl"
    env = {
        **NO_PACKAGES,
        "PYTHONPATH": str(package.parent),
        "FAKE_HUB_LISTING": json.dumps(listing),
        "FAKE_HUB_LOG": str(log),
    }
    return env, log


def test_hub_download_takes_only_what_training_needs(tmp_path: Path) -> None:
    env, log = fake_hub(tmp_path, SD15_LISTING)
    home = tmp_path / "home"
    result = bootstrap("--home", str(home), "--model", "stable-diffusion-v1-5/stable-diffusion-v1-5", env=env)
    assert result.returncode == 0, result.stderr
    (request,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert request["kind"] == "snapshot"
    assert request["allow_patterns"] == sorted(
        [
            "model_index.json",
            "feature_extractor/preprocessor_config.json",
            "scheduler/scheduler_config.json",
            "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
            "tokenizer/merges.txt", "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.json",
            "unet/config.json", "unet/diffusion_pytorch_model.fp16.safetensors",
            "vae/config.json", "vae/diffusion_pytorch_model.safetensors",  # no fp16 variant: the plain one
        ]
    )  # fmt: skip
    target = home / "models" / "stable-diffusion-v1-5--stable-diffusion-v1-5"
    assert request["local_dir"] == str(target)
    assert by_phase(result, "ready")[0].fields["model"] == str(target)


def test_hub_single_file_repos_and_named_files(tmp_path: Path) -> None:
    env, log = fake_hub(tmp_path, ["README.md", "model.safetensors", "model.ckpt"])
    result = bootstrap("--home", str(tmp_path / "home"), "--model", "someone/a-finetune", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(log.read_text().splitlines()[-1])["filename"] == "model.safetensors"
    named = bootstrap("--home", str(tmp_path / "home"), "--model", "hub:someone/a-finetune/sub/x.safetensors", env=env)
    assert named.returncode == 0, named.stderr
    assert json.loads(log.read_text().splitlines()[-1])["filename"] == "sub/x.safetensors"

    env, _ = fake_hub(tmp_path / "two", ["a.safetensors", "b.safetensors"])
    ambiguous = bootstrap("--home", str(tmp_path / "home"), "--model", "someone/two-files", env=env)
    assert ambiguous.returncode == 2
    assert "has 2 top-level .safetensors files (a.safetensors, b.safetensors)" in ambiguous.stderr


@pytest.mark.skipif(find_uv() is None, reason="uv is a dev dependency (pip install uv)")
def test_uv_itself_is_installed_with_pip_when_the_image_lacks_it(tmp_path: Path) -> None:
    """No uv on PATH: bootstrap installs it with `pip install --target HOME/uv`. The wheel here is a stand-in
    named uv whose script hands over to the real uv binary (the real wheel cannot be fetched offline)."""
    wheels = tmp_path / "wheels"
    shim = f'#!/bin/sh\nexec {find_uv()} "$@"\n'
    build_wheel(wheels, "uv", "0.0.1", [], extra={"uv-0.0.1.data/scripts/uv": shim})
    build_wheel(wheels, "gpurun-probe-dep", "0.3.0", [])
    env = {
        "PATH": "/usr/bin:/bin",  # no uv in sight
        "GPURUN_PIP_ARGS": f"--no-index --find-links {wheels}",
        "GPURUN_UV_ARGS": f"--no-index --find-links {wheels}",
        "GPURUN_REQUIREMENTS": "gpurun-probe-dep>=0.1",
        "GPURUN_SYSTEM_REQUIREMENTS": "",
        "UV_CACHE_DIR": str(tmp_path / "uv-cache"),
        "GPURUN_UV_INSTALLER_URL": "",  # never fall back to downloading uv from the internet here
    }
    home = tmp_path / "home"
    result = bootstrap("--home", str(home), env=env)
    assert result.returncode == 0, result.stderr
    assert "installing uv into" in result.stderr
    assert os.access(home / "uv" / "bin" / "uv", os.X_OK)
    assert by_phase(result, "env")[0].status == "installed"
