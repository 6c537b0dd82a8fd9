"""A fake Hugging Face hub on 127.0.0.1 (HF_ENDPOINT), enough for gpurun's checks and huggingface_hub's downloads.

What it answers, as huggingface.co does:
- `GET /api/models/{repo}` and `/api/models/{repo}/revision/{rev}`: the model info (`sha`, `gated`, `private`,
  `siblings`); an unknown or private repo is 401 `Repository Not Found` without a token (the hub does not say
  which) and 404 with one.
- `GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true`: files with `size` (and `lfs.size` for weights).
- `HEAD`/`GET /{repo}/resolve/{rev}/{path}`: `X-Repo-Commit`, `ETag`, `Content-Length` (for weights
  `X-Linked-Size`/`X-Linked-Etag` too) and the bytes; a gated repo answers 401 (no token) or 403 (a token
  that has not accepted the license) with `X-Error-Code: GatedRepo`; a missing file 404 `EntryNotFound`.

Repos are added with `add_repo(repo, files)`, where a file is its bytes, or an int: a size only (listed, never
downloadable; for multi-GB checkpoints in dry runs). `requests` records every request.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from tests.support.fakes.http_base import FakeServer, RecordedRequest, Response

WEIGHT_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt")


@dataclass
class FakeRepo:
    repo: str
    files: dict[str, bytes | int]
    gated: bool = False
    private: bool = False
    #: tokens that have accepted a gated repo's license (or may read a private one)
    allowed_tokens: set[str] = field(default_factory=set)

    @property
    def sha(self) -> str:
        return hashlib.sha1(self.repo.encode()).hexdigest()

    def size(self, path: str) -> int:
        data = self.files[path]
        return data if isinstance(data, int) else len(data)


class FakeHub(FakeServer):
    def __init__(self) -> None:
        super().__init__(api_key="hf_" + "x" * 34)
        self.repos: dict[str, FakeRepo] = {}

    @property
    def endpoint(self) -> str:
        return self.root_url

    def add_repo(self, repo: str, files: dict[str, bytes | int], **flags: Any) -> FakeRepo:
        with self.lock:
            self.repos[repo] = FakeRepo(repo, dict(files), **flags)
            return self.repos[repo]

    def route(self, request: RecordedRequest) -> Response:
        token = self.bearer(request)
        path = request.path
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)(?:/revision/[^/]+)?/?", path):
            return self._info(m.group(1), token)
        if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/tree/([^/]+)(?:/(.*))?", path):
            recursive = request.query.get("recursive", "").lower() == "true"
            return self._tree(m.group(1), token, m.group(3) or "", recursive)
        if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path):
            return self._resolve(m.group(1), m.group(3), token, head=request.method == "HEAD")
        return Response(404, {"error": "Not Found"})

    def _repo(self, name: str, token: str | None) -> FakeRepo | Response:
        with self.lock:
            repo = self.repos.get(name)
        hidden = repo is None or (repo.private and token not in repo.allowed_tokens)
        if hidden:
            # anonymous callers cannot tell a private repo from a missing one
            status = 404 if token else 401
            return Response(status, {"error": "Repository Not Found"}, headers={"X-Error-Code": "RepoNotFound"})
        assert repo is not None
        return repo

    def _info(self, name: str, token: str | None) -> Response:
        repo = self._repo(name, token)
        if isinstance(repo, Response):
            return repo
        return Response(
            200,
            {
                "id": repo.repo, "modelId": repo.repo, "sha": repo.sha, "private": repo.private,
                "gated": "manual" if repo.gated else False, "disabled": False, "tags": ["diffusers"],
                "siblings": [{"rfilename": f} for f in sorted(repo.files)],
            },
        )  # fmt: skip

    def _tree(self, name: str, token: str | None, prefix: str, recursive: bool) -> Response:
        repo = self._repo(name, token)
        if isinstance(repo, Response):
            return repo
        base = prefix.strip("/")
        entries, dirs = [], set()
        for path in sorted(repo.files):
            if base and not path.startswith(base + "/") and path != base:
                continue
            rest = path[len(base) + 1 :] if base else path
            if not recursive and "/" in rest:
                dirs.add((f"{base}/" if base else "") + rest.split("/", 1)[0])
                continue
            entry: dict[str, Any] = {"type": "file", "path": path, "size": repo.size(path), "oid": _oid(path)}
            if path.endswith(WEIGHT_SUFFIXES):
                entry["lfs"] = {"oid": _oid(path + "lfs"), "size": repo.size(path), "pointerSize": 134}
            entries.append(entry)
        if base and not entries and not dirs:
            return Response(404, {"error": f"{base} does not exist"}, headers={"X-Error-Code": "EntryNotFound"})
        entries += [{"type": "directory", "path": d, "oid": _oid(d), "size": 0} for d in sorted(dirs)]
        return Response(200, entries)

    def _resolve(self, name: str, path: str, token: str | None, *, head: bool) -> Response:
        repo = self._repo(name, token)
        if isinstance(repo, Response):
            return repo
        if repo.gated and token not in repo.allowed_tokens:
            status = 403 if token else 401
            message = f"Access to model {name} is restricted. You must have access to it and be authenticated."
            return Response(status, {"error": message}, headers={"X-Error-Code": "GatedRepo"})
        if path not in repo.files:
            return Response(404, {"error": "Entry not found"}, headers={"X-Error-Code": "EntryNotFound"})
        data = repo.files[path]
        etag = f'"{_oid(path)}"'
        headers = {"X-Repo-Commit": repo.sha, "ETag": etag, "Accept-Ranges": "bytes"}
        if path.endswith(WEIGHT_SUFFIXES):
            headers.update({"X-Linked-Size": str(repo.size(path)), "X-Linked-Etag": etag})
        if isinstance(data, int):
            # a listed size only: HEAD works (the size), a download does not
            if head:
                return Response(200, None, headers={**headers, "Content-Length": str(data)})
            return Response(503, {"error": "this fake serves no bytes for a size-only file"})
        headers["Content-Length"] = str(len(data))
        return Response(200, None if head else data, headers=headers, content_type="application/octet-stream")


def _oid(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()
