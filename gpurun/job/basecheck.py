"""Before anything is rented: the base model exists, the box will be allowed to download it, and how big it is.

A hub repo (or one file in it) is looked up on the Hugging Face hub (`HF_ENDPOINT`, default huggingface.co) with
the user's `HF_TOKEN` when set; an http(s) URL is asked with a HEAD, or a one-byte ranged GET where HEAD is
refused. A model that does not exist, is private, or is gated without access fails here with a clear error,
before any money is spent. For a repo the files the box downloads are chosen here from the listing, so the
estimate's download size is the download, and bootstrap.sh fetches exactly those files (`BaseSpec.files`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import re
from typing import Any
from urllib.parse import quote

import httpx

from gpurun.errors import AuthError, ConfigError, NotFoundError, ProviderError, TransientProviderError
from gpurun.job.bases import BaseSpec
from gpurun.models import ModelFamily
from gpurun.provision.http import ApiKey, ProviderHttp, RetryPolicy

DEFAULT_ENDPOINT = "https://huggingface.co"
TOKEN_ENV = "HF_TOKEN"
#: weights variants a diffusers repo may carry next to the plain files
_VARIANT = re.compile(r"\.(fp16|bf16|fp32|non_ema|ema_only)[.-]")
#: components the runner never loads
_SKIPPED_COMPONENTS = {"safety_checker", "feature_extractor", "image_encoder"}
_CONFIG_SUFFIXES = (".json", ".txt", ".model")


def hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def choose_repo_files(sizes: dict[str, int], repo: str) -> tuple[str, ...]:
    """What training needs from a repo: its single top-level checkpoint, or for a diffusers repo the model index,
    each component's configs and tokenizer files, and one set of weights (the plain files; a half-precision
    variant only where there is nothing else). ConfigError when neither layout fits."""
    if "model_index.json" not in sizes:
        singles = sorted(f for f in sizes if "/" not in f and f.endswith(".safetensors"))
        if len(singles) == 1:
            return (singles[0],)
        raise ConfigError(
            f"{repo} has {len(singles)} top-level .safetensors files and no model_index.json",
            where="--base",
            hint=f"name the file: --base {repo}/<file>" + (f" (one of {', '.join(singles[:5])})" if singles else ""),
        )
    keep = ["model_index.json"]
    components = sorted({f.split("/")[0] for f in sizes if "/" in f} - _SKIPPED_COMPONENTS)
    for component in components:
        inside = sorted(f for f in sizes if f.startswith(component + "/") and f.count("/") == 1)
        keep += [f for f in inside if f.endswith(_CONFIG_SUFFIXES)]
        weights = [f for f in inside if f.endswith(".safetensors")]
        plain = [f for f in weights if not _VARIANT.search(f)]
        keep += plain or [f for f in weights if ".fp16." in f]
    return tuple(keep)


class BaseChecker:
    """Answers about base models from the hub or a web server; one per plan."""

    def __init__(self, *, token: str | None = None, client: httpx.AsyncClient | None = None,
                 retry: RetryPolicy | None = None) -> None:  # fmt: skip
        token = token if token is not None else os.environ.get(TOKEN_ENV)
        self._token = ApiKey(token) if token and token.strip() else None
        self._owns_client = client is None
        self._client = client or httpx.AsyncClient(timeout=httpx.Timeout(30.0, connect=10.0))
        self._hub = ProviderHttp("huggingface", hub_endpoint(), self._token, key_env=TOKEN_ENV, client=self._client,
                                 retry=retry)  # fmt: skip
        # any web server: no key of ours goes there (a huggingface.co URL gets HF_TOKEN explicitly)
        self._web = ProviderHttp("web", "", None, key_env=TOKEN_ENV, client=self._client, retry=retry)

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def check(self, base: BaseSpec) -> BaseSpec:
        """`base` with its real size (and, for a repo, the files to fetch); raises ConfigError when it cannot
        be used, ProviderError when the hub or server cannot be asked."""
        if base.kind == "hub":
            return await self._check_hub(base)
        if base.kind == "url":
            return await self._check_url(base)
        return base

    # -- the hub ------------------------------------------------------------------------------------------------

    async def _check_hub(self, base: BaseSpec) -> BaseSpec:
        repo = base.ref
        info = await self._hub_json(f"/api/models/{repo}", repo)
        gated = bool(info.get("gated")) if isinstance(info, dict) else False
        sizes = await self._tree(repo)
        if base.filename:
            if base.filename not in sizes:
                tops = sorted(f for f in sizes if "/" not in f and f.endswith((".safetensors", ".ckpt")))
                raise ConfigError(
                    f"{repo} has no file {base.filename}",
                    where="--base",
                    hint=f"its checkpoints: {', '.join(tops[:6])}" if tops else "check the repo's files on the hub",
                )
            files: tuple[str, ...] = ()
            total = sizes[base.filename]
            probe = base.filename
        else:
            files = choose_repo_files(sizes, repo)
            total = sum(sizes[f] for f in files)
            probe = next((f for f in files if f.endswith(".safetensors")), files[0])
        if gated:
            await self._check_access(repo, probe)
        family, known = base.family, base.family_known
        if not known and "model_index.json" in files:
            detected = await self._family_from_index(repo)
            family, known = (detected, True) if detected else (family, known)
        preset = {"sd15": "sd15", "sd2": "sd2-v", "sdxl": "sdxl"}[family] if not base.family_known else base.preset
        return dataclasses.replace(
            base, bytes=total, files=files, gated=gated, size_known=True, family=family, family_known=known,
            preset=preset,
        )  # fmt: skip

    async def _hub_json(self, path: str, repo: str) -> Any:
        try:
            return await self._hub.json("GET", path)
        except (AuthError, NotFoundError):
            raise ConfigError(
                f"{repo} is not on the Hugging Face hub (or it is private)",
                where="--base",
                hint="check the id on huggingface.co"
                + ("; your HF_TOKEN cannot see it" if self._token else "; a private repo needs HF_TOKEN"),
            ) from None
        except ProviderError as error:
            raise _unreachable(error, hub_endpoint()) from None

    async def _tree(self, repo: str) -> dict[str, int]:
        """Every file in the repo's main branch with its size (following the listing's pages)."""
        sizes: dict[str, int] = {}
        url: str | None = f"/api/models/{repo}/tree/main?recursive=true"
        for _ in range(100):  # 1000 entries a page: no model repo needs more
            if url is None:
                break
            try:
                response = await self._hub.call(functools.partial(self._hub.request, "GET", url))
            except (AuthError, NotFoundError):
                raise ConfigError(f"{repo} is not on the Hugging Face hub (or it is private)", where="--base") from None
            except ProviderError as error:
                raise _unreachable(error, hub_endpoint()) from None
            for entry in self._hub.decode(response) or []:
                if isinstance(entry, dict) and entry.get("type") == "file" and isinstance(entry.get("path"), str):
                    found = entry.get("lfs")
                    lfs: dict[str, Any] = found if isinstance(found, dict) else {}
                    size = lfs.get("size", entry.get("size", 0))
                    sizes[entry["path"]] = int(size) if isinstance(size, (int, float)) and size >= 0 else 0
            url = response.links.get("next", {}).get("url")
        return sizes

    async def _check_access(self, repo: str, path: str) -> None:
        """A gated repo: may this token download from it? (The listing is public; the files are not.)"""
        if self._token is None:
            raise ConfigError(
                f"{repo} is gated: the box can download it only with your Hugging Face token",
                where="--base",
                hint=f"accept its license on {DEFAULT_ENDPOINT}/{repo}, then set HF_TOKEN (it goes to the box)",
            )
        try:
            await self._hub.call(
                lambda: self._hub.request("HEAD", f"/{repo}/resolve/main/{quote(path)}", accept_redirects=True)
            )
        except (AuthError, NotFoundError):
            raise ConfigError(
                f"your HF_TOKEN may not download {repo}",
                where="--base",
                hint=f"accept the model's license on {DEFAULT_ENDPOINT}/{repo} with the account the token belongs to",
            ) from None
        except ProviderError as error:
            raise _unreachable(error, hub_endpoint()) from None

    async def _family_from_index(self, repo: str) -> ModelFamily | None:
        """SDXL or not, from the pipeline class in model_index.json (a name can say anything)."""
        try:
            response = await self._hub.call(lambda: self._hub.request("GET", f"/{repo}/resolve/main/model_index.json"))
            index = json.loads(response.content)
        except (ProviderError, ValueError):
            return None
        name = str(index.get("_class_name", "")) if isinstance(index, dict) else ""
        if "XL" in name:
            return "sdxl"
        return "sd15" if name == "StableDiffusionPipeline" and not re.search(r"(^|\D)2", repo.split("/")[1]) else None

    # -- a URL --------------------------------------------------------------------------------------------------

    async def _check_url(self, base: BaseSpec) -> BaseSpec:
        """A HEAD request (redirects followed): 404 and 401/403 stop the plan; a server that refuses HEAD
        leaves the size to the family's typical one (a ranged GET could pull gigabytes from a server that
        ignores Range, so none is tried)."""
        url = base.ref
        headers = {"Accept": "*/*"}
        if (httpx.URL(url).host or "").endswith("huggingface.co") and self._token is not None:
            headers["Authorization"] = f"Bearer {self._token.reveal()}"
        try:
            response = await self._web.call(
                lambda: self._web.request("HEAD", url, headers=headers, follow_redirects=True)
            )
        except (AuthError, NotFoundError) as error:
            raise _url_refused(url, error) from None
        except TransientProviderError as error:
            raise _unreachable(error, url) from None
        except ProviderError:
            return base  # HEAD refused (405 and the like): nothing more to learn without downloading
        size = _int(response.headers.get("Content-Length"))
        return dataclasses.replace(base, bytes=size, size_known=True) if size else base


def _int(text: str | None) -> int | None:
    try:
        value = int(str(text))
    except ValueError:
        return None
    return value if value >= 0 else None


def _url_refused(url: str, error: ProviderError) -> ConfigError:
    if isinstance(error, NotFoundError):
        return ConfigError(f"there is no file at {url}", where="--base", hint="check the URL")
    return ConfigError(
        f"the server refused access to {url}",
        where="--base",
        hint="a gated or private download needs a token (HF_TOKEN for huggingface.co)",
    )


def _unreachable(error: ProviderError, where: str) -> ProviderError:
    return ProviderError(
        f"cannot check the base model at {where}: {error.message}",
        provider="huggingface" if where.startswith(hub_endpoint()) else "web",
        hint="gpurun checks that the model exists before renting; check your connection and try again",
    )
