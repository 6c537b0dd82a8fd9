"""The SFTP side of an SSH session: file stat, atomic uploads, downloads and listings over the open connection.

`sync.py` uses these as its fallback when rsync is missing, and for single-file fetches, where the open
connection beats rsync's fresh SSH handshake. `SshSession` mixes this in.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import stat as stat_mod
from pathlib import Path
from typing import cast

import asyncssh

from gpurun.errors import SshError, SyncError, TransientSshError
from gpurun.remote.transport import FileChannelUnavailable, FileStat

# What a dropped or refused connection looks like through asyncssh; session.py uses the same tuple.
TRANSIENT = (OSError, asyncio.TimeoutError, asyncssh.DisconnectError, asyncssh.ChannelOpenError, EOFError)


class SftpFiles:
    """File operations over SFTP; needs `_conn`, `_sftp`, `where` and `_lost` from the session."""

    _conn: asyncssh.SSHClientConnection
    _sftp: asyncssh.SFTPClient | None
    where: str

    def _lost(self, cmd: str, exc: BaseException | None) -> TransientSshError:  # pragma: no cover - overridden
        raise NotImplementedError

    async def stat(self, path: str) -> FileStat | None:
        sftp = await self._sftp_client()
        try:
            attrs = await sftp.stat(path)
        except asyncssh.SFTPNoSuchFile:
            return None
        except TRANSIENT as exc:
            raise self._lost(f"stat {path}", exc) from None
        return _file_stat(attrs)

    async def _sftp_client(self) -> asyncssh.SFTPClient:
        if self._sftp is None:
            try:
                self._sftp = await self._conn.start_sftp_client()
            except asyncssh.ChannelOpenError as exc:
                raise self._lost("sftp", exc) from None
            except asyncssh.SFTPError as exc:
                raise FileChannelUnavailable(
                    f"the instance has no SFTP server: {exc}",
                    where=self.where,
                    hint="install rsync or openssh-sftp-server in the image",
                ) from None
        return self._sftp

    async def put_file(self, local: Path, remote: str) -> None:
        """Upload one file atomically (temp name, then rename), keeping its modification time."""
        sftp = await self._sftp_client()
        tmp = f"{remote}.gpurun-part"
        try:
            parent = posixpath.dirname(remote)
            if parent:
                await sftp.makedirs(parent, exist_ok=True)
            await sftp.put(str(local), tmp, preserve=True, follow_symlinks=True)  # a file link sends its file
            try:
                await sftp.posix_rename(tmp, remote)
            except asyncssh.SFTPOpUnsupported:  # servers without OpenSSH's extension: not atomic, but works
                with contextlib.suppress(asyncssh.SFTPNoSuchFile):
                    await sftp.remove(remote)
                await sftp.rename(tmp, remote)
        except TRANSIENT as exc:
            raise self._lost(f"upload {remote}", exc) from None
        except asyncssh.SFTPError as exc:
            raise SshError(f"upload of {local} to {remote} failed: {exc}", where=self.where) from None

    async def get_file(self, remote: str, local: Path, *, max_bytes: int | None = None) -> None:
        """Download one regular file, reading at most `max_bytes` (the host may lie about sizes)."""
        sftp = await self._sftp_client()
        try:
            attrs = await sftp.lstat(remote)
            if not _is_regular(attrs) or stat_mod.S_ISLNK(attrs.permissions or 0):
                raise SyncError(f"{remote} on the instance is not a regular file; it is not fetched", where=self.where)
            if max_bytes is not None and (attrs.size or 0) > max_bytes:
                raise SyncError(f"{remote} on the instance is {attrs.size} bytes, over {max_bytes}", where=self.where)
            received = 0
            async with sftp.open(remote, "rb") as source:
                with open(local, "wb") as sink:
                    # opened "rb": asyncssh returns bytes (its signature says str | bytes for both modes)
                    while chunk := cast(bytes, await source.read(1 << 20)):
                        received += len(chunk)
                        if max_bytes is not None and received > max_bytes:
                            raise SyncError(f"{remote} grew past {max_bytes} bytes while fetched", where=self.where)
                        sink.write(chunk)
        except asyncssh.SFTPNoSuchFile:
            raise SyncError(f"no such file on the instance: {remote}", where=self.where) from None
        except TRANSIENT as exc:
            raise self._lost(f"download {remote}", exc) from None
        except asyncssh.SFTPError as exc:
            raise SshError(f"download of {remote} failed: {exc}", where=self.where) from None

    async def list_files(self, remote_dir: str) -> dict[str, FileStat]:
        """Every regular file under `remote_dir`, by POSIX path relative to it (empty if it does not exist)."""
        sftp = await self._sftp_client()
        found: dict[str, FileStat] = {}

        async def walk(folder: str, prefix: str) -> None:
            async for entry in sftp.scandir(folder):
                name = str(entry.filename)
                if name in (".", ".."):
                    continue
                info = _file_stat(entry.attrs)
                rel = f"{prefix}{name}"
                if info.is_dir:
                    await walk(posixpath.join(folder, name), rel + "/")
                elif _is_regular(entry.attrs):
                    found[rel] = info

        try:
            await walk(remote_dir, "")
        except asyncssh.SFTPNoSuchFile:
            return {}
        except TRANSIENT as exc:
            raise self._lost(f"list {remote_dir}", exc) from None
        return found


def _is_regular(attrs: asyncssh.SFTPAttrs) -> bool:
    return attrs.type == asyncssh.FILEXFER_TYPE_REGULAR or stat_mod.S_ISREG(attrs.permissions or 0)


def _file_stat(attrs: asyncssh.SFTPAttrs) -> FileStat:
    is_dir = attrs.type == asyncssh.FILEXFER_TYPE_DIRECTORY or stat_mod.S_ISDIR(attrs.permissions or 0)
    return FileStat(size=int(attrs.size or 0), mtime=float(attrs.mtime or 0), is_dir=is_dir)
