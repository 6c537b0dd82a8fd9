"""The error tree: every failure gpurun reports is one of these, with what went wrong, where, and how to fix it.

    GpurunError                     message + where (file, field, provider, run) + hint; exit code 1
    ├── UserError                   the user's input is wrong; never retried
    │   ├── ConfigError             a config file or option (names the file and the key)
    │   ├── DatasetError            the training data (names the file)
    │   ├── BudgetError             nothing fits the budget / the estimate exceeds it
    │   └── ResumeError             a run cannot be continued (done, its machine still runs, no pulled state)
    ├── ProviderError               a GPU provider's API (names the provider)
    │   ├── AuthError               401/403: the API key is missing or wrong; never retried
    │   ├── TransientProviderError  429, 5xx, timeouts, connection resets; retried (honours retry_after)
    │   ├── CapacityError           the offer is gone / no capacity; the orchestrator fails over
    │   └── NotFoundError           the instance or offer does not exist
    ├── RemoteError                 the instance, over SSH
    │   ├── SshError                connect/auth/exec failures (TransientSshError is retried)
    │   ├── SyncError               rsync/SFTP transfer failed or a checksum did not match
    │   ├── RunnerError             the training runner failed (carries its last lines)
    │   └── UntrustedReportError    the machine reported a path, size or hash gpurun will not act on
    ├── PriceError                  the billed price is above the quote; the instance is destroyed
    ├── DeadlineError               a phase ran past its deadline
    └── JournalError                the run journal is unreadable or a run id is unknown

Only `retry.py` decides what is retried, and it retries only TransientProviderError and TransientSshError.
"""

from __future__ import annotations


class GpurunError(Exception):
    """Base of every gpurun error; renders as one line: message (where) — hint."""

    exit_code: int = 1

    def __init__(self, message: str, *, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.where = where
        self.hint = hint

    def one_line(self) -> str:
        """The single line the CLI prints: what is wrong, where, how to fix it."""
        text = self.message
        if self.where:
            text = f"{self.where}: {text}"
        if self.hint:
            text = f"{text} — {self.hint}"
        return text

    def to_dict(self) -> dict[str, str | None]:
        return {"error": type(self).__name__, "message": self.message, "where": self.where, "hint": self.hint}


class UserError(GpurunError):
    """The user's input is wrong; fixing the input fixes the problem."""


class ConfigError(UserError):
    """A configuration file, key or command-line option is invalid."""


class DatasetError(UserError):
    """The training dataset is unusable."""


class BudgetError(UserError):
    """The job cannot be done within the budget."""


class ResumeError(UserError):
    """A run cannot be continued on a new machine: it is done, its machine still runs, it is not a training run,
    or no training state was pulled from it yet."""


class ProviderError(GpurunError):
    """A GPU provider's API refused or failed a request."""

    def __init__(self, message: str, *, provider: str, where: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, where=where or provider, hint=hint)
        self.provider = provider


class AuthError(ProviderError):
    """The provider rejected the API key (401/403). Never retried."""


class TransientProviderError(ProviderError):
    """Rate limits, server errors and timeouts: worth retrying after a pause."""

    def __init__(
        self,
        message: str,
        *,
        provider: str,
        retry_after: float | None = None,
        where: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, provider=provider, where=where, hint=hint)
        self.retry_after = retry_after


class CapacityError(ProviderError):
    """The offer was taken or the provider has no capacity for it."""


class NotFoundError(ProviderError):
    """The instance or offer does not exist (any more)."""


class RemoteError(GpurunError):
    """Something failed on the rented instance."""


class SshError(RemoteError):
    """SSH connection, authentication or command execution failed."""


class TransientSshError(SshError):
    """A dropped or refused SSH connection that a reconnect may cure."""


class SyncError(RemoteError):
    """A file transfer failed or a checksum did not match."""


class RunnerError(RemoteError):
    """The training runner failed; carries its last output lines."""

    def __init__(
        self,
        message: str,
        *,
        last_lines: list[str] | None = None,
        where: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, where=where, hint=hint)
        self.last_lines = list(last_lines or [])


class PriceError(GpurunError):
    """The provider billed more than the quoted price."""


class DeadlineError(GpurunError):
    """A phase ran past its deadline."""


class JournalError(GpurunError):
    """The run journal cannot be read, or a run id is unknown."""


class UntrustedReportError(RemoteError):
    """The rented machine reported something gpurun will not act on: a file name outside the run, an absurd size,
    a malformed hash. The machine is treated as compromised or broken; nothing outside the run folder is touched."""
