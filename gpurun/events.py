"""The runner→client event protocol: one JSON object per line on the runner's stdout, shared by both sides.

Every line is `{"v": 1, "type": <kind>, "t": <unix time>, ...fields}`. The runner writes them with `emit()`
(unbuffered); the client reads them with `parse_line()`, which never raises: a line that is not a known event
comes back as a `LogLine`, so stray prints from libraries cannot break the stream. New fields may be added;
readers ignore fields they do not know.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, ClassVar

PROTOCOL_VERSION = 1


@dataclass
class Event:
    kind: ClassVar[str] = "event"
    t: float = field(default_factory=time.time, kw_only=True)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return {"v": PROTOCOL_VERSION, "type": self.kind, **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=str)


@dataclass
class Start(Event):
    """Training is about to begin: what was loaded, on what, with which facts."""

    kind: ClassVar[str] = "start"
    device: str = "cpu"
    dtype: str = "float32"
    #: detected base-model family: sd15 | sd2 | sdxl, and how it was detected
    family: str = ""
    detected: str = ""
    total_steps: int = 0
    epochs: int = 0
    batch_size: int = 0
    resumed_from_step: int = 0
    config: dict[str, Any] = field(default_factory=dict)
    dataset: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass
class Phase(Event):
    """A named stage began (loading model, caching latents, training, sampling, ...)."""

    kind: ClassVar[str] = "phase"
    name: str = ""
    detail: str = ""


@dataclass
class Step(Event):
    kind: ClassVar[str] = "step"
    epoch: int = 0
    epochs: int = 0
    step: int = 0
    total_steps: int = 0
    loss: float = 0.0
    loss_avg: float = 0.0
    lr: float = 0.0
    samples_per_s: float = 0.0
    eta_s: float = 0.0
    #: peak memory so far in GB: the GPU's allocated memory on CUDA, the process's resident memory on a CPU
    #: (0 = not measured); `memory_kind` says which
    memory_gb: float = 0.0
    memory_kind: str = ""


@dataclass
class Checkpoint(Event):
    """A LoRA file was written. `path` is relative to the run's output_dir."""

    kind: ClassVar[str] = "checkpoint"
    path: str = ""
    sha256: str = ""
    bytes: int = 0
    epoch: int = 0
    step: int = 0
    final: bool = False


@dataclass
class Sample(Event):
    """A sample grid image was written. `path` is relative to the run's output_dir."""

    kind: ClassVar[str] = "sample"
    path: str = ""
    sha256: str = ""
    bytes: int = 0
    epoch: int = 0


@dataclass
class WarningEvent(Event):
    kind: ClassVar[str] = "warning"
    message: str = ""
    code: str = ""


@dataclass
class ErrorEvent(Event):
    """The runner failed. `hint` says what to change; the runner exits non-zero after emitting this."""

    kind: ClassVar[str] = "error"
    message: str = ""
    hint: str = ""
    code: str = ""


@dataclass
class Done(Event):
    kind: ClassVar[str] = "done"
    steps: int = 0
    epochs: int = 0
    seconds: float = 0.0
    samples_per_s: float = 0.0
    final: str = ""
    sha256: str = ""
    bytes: int = 0


@dataclass
class LogLine(Event):
    """Any line that is not a protocol event (library prints, tracebacks)."""

    kind: ClassVar[str] = "log"
    text: str = ""


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls for cls in (Start, Phase, Step, Checkpoint, Sample, WarningEvent, ErrorEvent, Done, LogLine)
}


def emit(event: Event, stream: IO[str] | None = None) -> None:
    """Write one event line and flush, so a reader over SSH sees it at once."""
    out = stream if stream is not None else sys.stdout
    out.write(event.to_json() + "\n")
    out.flush()


def _fits(annotation: str, name: str, value: Any) -> bool:
    """Whether `value` is what the field declares. The lines come from a machine gpurun does not own: a loss that
    is a string, or a step that is a list, must not reach the progress display or the money arithmetic."""
    if annotation == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        # a diverged run reports a NaN loss, and the user should see it; a NaN time or rate is nonsense
        return math.isfinite(value) or name.startswith("loss")
    if annotation == "str":
        return isinstance(value, str)
    if annotation == "bool":
        return isinstance(value, bool)
    if annotation.startswith("dict"):
        return isinstance(value, dict)
    if annotation.startswith("list"):
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return True


def from_dict(data: dict[str, Any]) -> Event:
    """Build the event a dict describes; unknown types and fields degrade gracefully, and an event whose known
    fields have the wrong types comes back as a LogLine (shown, never acted on)."""
    cls = EVENT_TYPES.get(str(data.get("type")))
    if cls is None:
        return LogLine(text=json.dumps(data))
    fields = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in fields}
    if not all(_fits(fields[k], k, v) for k, v in kwargs.items()):
        return LogLine(text=json.dumps(data))
    if "t" in kwargs:
        kwargs["t"] = float(kwargs["t"])
    return cls(**kwargs)


def parse_line(line: str) -> Event:
    """Parse one line of runner output. Never raises."""
    text = line.rstrip("\r\n")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return LogLine(text=text)
        if isinstance(data, dict) and "type" in data:
            return from_dict(data)
    return LogLine(text=text)
