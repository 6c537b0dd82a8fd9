"""The live view renders the same run as plain lines or JSON lines."""

from __future__ import annotations

import io
import json

from gpurun.cli.live import JsonView, Money, PlainView, make_view
from gpurun.events import Checkpoint, LogLine, Start, Step, WarningEvent


def _feed(view) -> None:
    view.phase("training", "on cpu")
    view.event(Start(device="cpu", dtype="float32", total_steps=4, detected="SD 1.5"))
    view.money(Money(spent=0.01, projected=0.05, budget=1.0))
    for step in range(1, 5):
        view.event(
            Step(epoch=1, epochs=1, step=step, total_steps=4, loss=0.1, loss_avg=0.1, samples_per_s=2.0, eta_s=4 - step)
        )
    view.event(Checkpoint(path="lora.safetensors", sha256="ab", bytes=3, final=True))
    view.event(WarningEvent(message="low disk"))
    view.event(LogLine(text="noise"))


def test_plain_view_throttles_steps_but_prints_the_last() -> None:
    stream = io.StringIO()
    _feed(PlainView(stream, interval=3600))
    text = stream.getvalue()
    assert "[training] on cpu" in text
    step_lines = [line for line in text.splitlines() if "step " in line]
    assert len(step_lines) == 2  # the first (interval elapsed since start) and the last
    assert "step 4/4" in step_lines[-1] and "$0.010 spent" in step_lines[-1] and "$1.00 budget" in step_lines[-1]
    assert "checkpoint: lora.safetensors" in text and "warning: low disk" in text
    assert "noise" not in text


def test_json_view_streams_events_and_client_phases() -> None:
    stream = io.StringIO()
    _feed(JsonView(stream))
    docs = [json.loads(line) for line in stream.getvalue().splitlines()]
    types = [doc["type"] for doc in docs]
    assert types == ["client_phase", "start", "money", "step", "step", "step", "step", "checkpoint", "warning"]
    assert docs[2]["budget"] == 1.0 and docs[-2]["final"] is True


def test_make_view_picks_by_mode() -> None:
    assert isinstance(make_view(as_json=True), JsonView)
    assert isinstance(make_view(as_json=False, stream_is_tty=False), PlainView)
