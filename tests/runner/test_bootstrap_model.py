"""bootstrap.sh's model step for real: argument errors, a file already on the machine, resumable URL downloads
from a loopback server (the standard library's, as images do not all have curl), and hub downloads of exactly
the files the client chose (through a stand-in for huggingface_hub that records the calls)."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from tests.support.bootstrap_helpers import bootstrap, by_phase, write_lock


@pytest.fixture
def no_packages(tmp_path: Path) -> list[str]:
    """Arguments for a bootstrap whose lock asks for nothing: the environment step is instant."""
    return ["--home", str(tmp_path / "home"), "--lock-dir", str(write_lock(tmp_path / "empty-lock", {}))]


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--frobnicate"], 2, "unknown argument: --frobnicate"),
        (["--home"], 2, "--home needs a folder"),
        (["--model", "not a model!"], 2, "cannot understand the model spec 'not a model!'"),
        (["--model", "ftp://example.org/model.ckpt"], 2, "cannot understand the model spec"),
        (["--model", "hub:nope"], 2, "not a hub id: nope"),
        (["--model", "/does/not/exist.safetensors"], 5, "is not on this machine"),
        (["--bundle", "/no/such/bundle"], 2, "--bundle /no/such/bundle does not hold the gpurun package"),
    ],
)
def test_bad_arguments_fail_clearly(no_packages: list[str], args: list[str], code: int, message: str) -> None:
    result = bootstrap(*no_packages, *args)
    assert result.returncode == code, result.stderr
    assert message in result.stderr
    error = by_phase(result, "error")[0]
    assert error.fields["code"] == str(code) and message in error.fields["message"]


def test_the_lock_folder_is_required(tmp_path: Path) -> None:
    result = bootstrap("--home", str(tmp_path / "h"))
    assert result.returncode == 2 and "--lock-dir is required" in result.stderr


def test_a_local_model_file_is_checked_not_downloaded(tmp_path: Path, no_packages: list[str]) -> None:
    model = tmp_path / "uploaded model.safetensors"
    model.write_bytes(b"\x00" * 1234)
    result = bootstrap(*no_packages, "--model", str(model))
    assert result.returncode == 0, result.stderr
    step = by_phase(result, "model")[0]
    assert (step.status, step.fields["path"], step.fields["bytes"]) == ("exists", str(model), "1234")
    assert by_phase(result, "ready")[0].fields["model"] == str(model)
    model.write_bytes(b"")
    empty = bootstrap(*no_packages, "--model", str(model))
    assert empty.returncode == 5 and "is empty" in empty.stderr


def test_a_hub_model_without_network_fails_with_a_hint(no_packages: list[str]) -> None:
    result = bootstrap(*no_packages, "--model", "org/some-model", env={"HF_HUB_OFFLINE": "1"})
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


def test_url_download_then_resume_then_reuse(tmp_path: Path, http_files, no_packages: list[str]) -> None:
    base, root, handler = http_files
    payload = os.urandom(300_000)
    (root / "v1-5-pruned.safetensors").write_bytes(payload)
    home = tmp_path / "home"
    url = f"{base}/v1-5-pruned.safetensors?download=true"

    fresh = bootstrap(*no_packages, "--model", url)
    assert fresh.returncode == 0, fresh.stderr
    dest = home / "models" / "v1-5-pruned.safetensors"
    assert dest.read_bytes() == payload
    done = by_phase(fresh, "model")[-1]
    assert (done.status, done.fields["path"], done.fields["bytes"]) == ("done", str(dest), "300000")

    again = bootstrap(*no_packages, "--model", url)
    assert by_phase(again, "model")[0].status == "exists" and again.returncode == 0

    # an interrupted earlier download left the first part: the download resumes with a Range request
    dest.unlink()
    (home / "models" / "v1-5-pruned.safetensors.part").write_bytes(payload[:120_000])
    digest = hashlib.sha256(payload).hexdigest()
    resumed = bootstrap(*no_packages, "--model", url, "--model-sha256", digest)
    assert resumed.returncode == 0, resumed.stderr
    assert handler.seen_ranges == ["bytes=120000-"]
    assert dest.read_bytes() == payload and not (home / "models" / "v1-5-pruned.safetensors.part").exists()


def test_url_download_restarts_when_the_server_cannot_resume(tmp_path: Path, http_files, no_packages) -> None:
    base, root, handler = http_files
    handler.ranges = False  # plain http.server: ignores Range and answers 200 with the whole file
    payload = os.urandom(50_000)
    (root / "model").write_bytes(payload)
    home = tmp_path / "home"
    (home / "models").mkdir(parents=True)
    (home / "models" / "custom.safetensors.part").write_bytes(b"stale start")
    result = bootstrap(*no_packages, "--model", f"{base}/model", "--model-file", "custom.safetensors")
    assert result.returncode == 0, result.stderr
    assert (home / "models" / "custom.safetensors").read_bytes() == payload


def test_url_download_failures(tmp_path: Path, http_files, no_packages: list[str]) -> None:
    base, root, _ = http_files
    (root / "m.safetensors").write_bytes(b"real bytes")
    home = tmp_path / "home"
    missing = bootstrap(*no_packages, "--model", f"{base}/nope.safetensors")
    assert missing.returncode == 5 and "HTTP 404 for" in missing.stderr
    wrong = bootstrap(*no_packages, "--model", f"{base}/m.safetensors", "--model-sha256", "0" * 64)
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
    for name in allow_patterns:
        path = os.path.join(local_dir, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").write("{}")
    return local_dir
'''


def fake_hub(tmp_path: Path, listing: list[str]) -> tuple[dict[str, str], Path]:
    package = tmp_path / "fakehub" / "huggingface_hub"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(FAKE_HUB)
    log = tmp_path / "hub-log.jsonl"
    env = {
        "PYTHONPATH": str(package.parent),
        "FAKE_HUB_LISTING": json.dumps(listing),
        "FAKE_HUB_LOG": str(log),
    }
    return env, log


def test_hub_repo_downloads_exactly_the_files_the_client_chose(tmp_path: Path, no_packages: list[str]) -> None:
    env, log = fake_hub(tmp_path, ["model_index.json", "unet/config.json", "unet/x.safetensors", "vae/y.bin"])
    home = tmp_path / "home"
    chosen = "model_index.json unet/config.json unet/x.safetensors"
    result = bootstrap(*no_packages, "--model", "org/diffusers-repo", "--model-files", chosen, env=env)
    assert result.returncode == 0, result.stderr
    (request,) = [json.loads(line) for line in log.read_text().splitlines()]
    assert request["kind"] == "snapshot" and request["allow_patterns"] == sorted(chosen.split())
    target = home / "models" / "org--diffusers-repo"
    assert request["local_dir"] == str(target)
    assert by_phase(result, "ready")[0].fields["model"] == str(target)


def test_hub_single_file_repos_and_named_files(tmp_path: Path, no_packages: list[str]) -> None:
    env, log = fake_hub(tmp_path, ["README.md", "model.safetensors", "model.ckpt"])
    result = bootstrap(*no_packages, "--model", "someone/a-finetune", env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads(log.read_text().splitlines()[-1])["filename"] == "model.safetensors"
    named = bootstrap(*no_packages, "--model", "hub:someone/a-finetune/sub/x.safetensors", env=env)
    assert named.returncode == 0, named.stderr
    assert json.loads(log.read_text().splitlines()[-1])["filename"] == "sub/x.safetensors"

    env, _ = fake_hub(tmp_path / "two", ["a.safetensors", "b.safetensors"])
    ambiguous = bootstrap(*no_packages, "--model", "someone/two-files", env=env)
    assert ambiguous.returncode == 2
    assert "has 2 top-level .safetensors files (a.safetensors, b.safetensors)" in ambiguous.stderr
