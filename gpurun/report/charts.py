"""The report's charts, drawn by matplotlib as inline SVG: loss, learning rate, speed, memory, the receipt.

Each plotted series carries an SVG id (`loss-raw`, `lr`, ...), so a test or a curious reader can find it in the
page; path simplification is off, so every logged point is in the picture. Text stays text (no embedded fonts)
and the output is deterministic (fixed hash salt, no date), so the same run gives the same page.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: the report is written on servers and in CI too

import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from gpurun.events import Step

STYLE: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "gpurun",
    "path.simplify": False,
    "font.size": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
#: exponential smoothing of the raw loss, as TensorBoard's slider at 0.9
SMOOTHING = 0.9


@contextmanager
def _styled() -> Iterator[None]:
    """The report's look, for the charts drawn inside; the process's own matplotlib settings are restored after."""
    with plt.rc_context():
        # matplotlib's stubs type the keys as a Literal of every known name; ours are known names
        plt.rcParams.update(STYLE)  # type: ignore[arg-type]
        yield


def smoothed(values: Sequence[float], weight: float = SMOOTHING) -> list[float]:
    """Debiased exponential moving average (TensorBoard's): NaN values are skipped, not propagated."""
    out: list[float] = []
    last, norm = 0.0, 0.0
    for value in values:
        if math.isfinite(value):
            last = last * weight + (1 - weight) * value
            norm = norm * weight + (1 - weight)
        out.append(last / norm if norm else math.nan)
    return out


def _svg(fig: Figure) -> str:
    buffer = io.StringIO()
    fig.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None}, bbox_inches="tight")
    plt.close(fig)
    text = buffer.getvalue()
    # inline SVG: drop the XML prolog and DOCTYPE, keep the <svg> element
    return text[text.index("<svg") :]


def _figure(width: float = 7.0, height: float = 2.6) -> tuple[Figure, plt.Axes]:
    fig, ax = plt.subplots(figsize=(width, height))
    return fig, ax


def loss_chart(steps: Sequence[Step]) -> str:
    """Loss (raw, and smoothed) against the step."""
    with _styled():
        fig, ax = _figure()
        x = [s.step for s in steps]
        raw = [s.loss for s in steps]
        ax.plot(x, raw, color="#9bb8d3", linewidth=1, marker="o", markersize=2, label="loss", gid="loss-raw")
        ax.plot(x, smoothed(raw), color="#1f5f99", linewidth=1.8, label=f"smoothed ({SMOOTHING})", gid="loss-smooth")
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.legend(loc="upper right", frameon=False)
        return _svg(fig)


def lr_chart(steps: Sequence[Step]) -> str:
    """Learning rate (of the first parameter group, the U-Net's) against the step."""
    with _styled():
        fig, ax = _figure(height=2.2)
        ax.plot([s.step for s in steps], [s.lr for s in steps], color="#7a4fa3", linewidth=1.5, gid="lr")
        ax.set_xlabel("step")
        ax.set_ylabel("learning rate")
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        return _svg(fig)


def speed_memory_chart(steps: Sequence[Step]) -> str:
    """Samples/s and peak memory against the minutes since the first logged step."""
    t0 = steps[0].t
    minutes = [(s.t - t0) / 60 for s in steps]
    with _styled():
        fig, ax = _figure()
        ax.plot(minutes, [s.samples_per_s for s in steps], color="#2a8a4a", linewidth=1.5, gid="speed")
        ax.set_xlabel("minutes since the first step")
        ax.set_ylabel("samples/s", color="#2a8a4a")
        measured = [s for s in steps if s.memory_gb > 0]
        if measured:
            kind = "GPU" if measured[-1].memory_kind == "gpu" else "RAM"
            mem = ax.twinx()
            mem.plot([(s.t - t0) / 60 for s in measured], [s.memory_gb for s in measured], color="#c0632b",
                     linewidth=1.2, linestyle="--", gid="memory")  # fmt: skip
            mem.set_ylabel(f"peak {kind} memory (GB)", color="#c0632b")
            mem.set_ylim(bottom=0)
            mem.grid(False)
        return _svg(fig)


def receipt_chart(phases: Sequence[str], estimated: Sequence[float], actual: Sequence[float | None],
                  unit: str, gid: str) -> str:  # fmt: skip
    """Estimate against actual, per phase, as paired bars; a phase not (yet) measured has no actual bar."""
    with _styled():
        fig, ax = _figure(width=6.0, height=2.4)
        xs = range(len(phases))
        width = 0.38
        estimated_bars = ax.bar([x - width / 2 for x in xs], estimated, width, color="#b9c7d6", label="estimated")
        actual_bars = ax.bar([x + width / 2 for x in xs], [a if a is not None else 0.0 for a in actual], width,
                             color="#1f5f99", label="actual")  # fmt: skip
        # one id per bar (`receipt-time-actual-boot`): SVG ids must be unique in the page
        for phase, bar in zip(phases, estimated_bars, strict=True):
            bar.set_gid(f"{gid}-estimated-{phase}")
        for phase, bar in zip(phases, actual_bars, strict=True):
            bar.set_gid(f"{gid}-actual-{phase}")
        ax.set_xticks(list(xs), list(phases))
        ax.set_ylabel(unit)
        ax.legend(loc="upper right", frameon=False)
        return _svg(fig)


def points_in(svg: str, gid: str) -> int:
    """How many points the path of series `gid` has in `svg` (for tests and sanity checks)."""
    match = re.search(rf'<g id="{re.escape(gid)}">\s*<path d="([^"]*)"', svg)
    return 0 if match is None else len(re.findall(r"[ML]", match.group(1)))
