"""The sample grid: prompts × seeds (rows) by LoRA weight (columns), rendered from the saved kohya file itself.

Loading the exported file (not the in-memory adapter) proves the artifact the user downloads works; weight 0 is
the base model. The grid borrows the training model's components, so it costs no extra memory, and it leaves
the training state exactly as it found it (active adapter, requires_grad flags, train/eval modes, RNG).
"""

from __future__ import annotations

import contextlib
import logging
import os
import textwrap
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpurun.errors import ConfigError
from gpurun.runner.lora import ADAPTER
from gpurun.runner.lycoris_file import is_lycoris_file, lycoris_file_applied

if TYPE_CHECKING:
    from PIL import Image

    from gpurun.runner.model.loaded import LoadedModel

GRID_ADAPTER = "gpurun_grid"
LABEL_WIDTH = 240  # px, the row-label column
HEADER_HEIGHT = 28  # px, the column-header row
GAP = 4  # px between cells
BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


def default_prompts(captions: Sequence[str], trigger: str | None, n: int = 3) -> list[str]:
    """Up to n training captions spread over the dataset, each containing the trigger (prepended when missing)."""
    unique = list(dict.fromkeys(c.strip() for c in captions if c and c.strip()))
    if not unique:
        return [trigger] if trigger else ["a photo"]
    picks = [unique[(i * len(unique)) // min(n, len(unique))] for i in range(min(n, len(unique)))]
    if not trigger:
        return picks
    return [p if trigger.lower() in p.lower() else f"{trigger}, {p}" for p in picks]


def grid_prompts(sample_prompts: list[str] | str | None, captions: Sequence[str], trigger: str | None) -> list[str]:
    """The grid's prompts: the config's list, or its prompts file (one per line, # comments), else
    `default_prompts`. Resolved before training, so a bad prompts file fails before the GPU time is spent."""
    if isinstance(sample_prompts, list):
        return sample_prompts
    if sample_prompts is None:
        return default_prompts(captions, trigger)
    try:
        lines = Path(sample_prompts).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"cannot read the sample prompts: {exc}", where=sample_prompts, hint="fix sample_prompts or remove it"
        ) from None
    prompts = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not prompts:
        raise ConfigError("the sample prompts file has no prompts", where=sample_prompts, hint="one prompt per line")
    return prompts


def grid_geometry(rows: int, cols: int, cell: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the composed grid image."""
    width, height = cell
    return LABEL_WIDTH + cols * (width + GAP), HEADER_HEIGHT + rows * (height + GAP)


def cell_origin(row: int, col: int, cell: tuple[int, int]) -> tuple[int, int]:
    """Top-left pixel of a cell in the composed grid."""
    width, height = cell
    return LABEL_WIDTH + col * (width + GAP), HEADER_HEIGHT + row * (height + GAP)


def render_cells(
    model: LoadedModel,
    lora_path: Path,
    *,
    prompts: Sequence[str],
    weights: Sequence[float],
    seeds: Sequence[int],
    steps: int,
    resolution: tuple[int, int],
    negative: str = "",
    sampler: str = "euler_a",
    guidance_scale: float = 7.0,
) -> dict[tuple[int, int, int], Image.Image]:
    """Render every cell: {(prompt index, seed index, weight index): image}. resolution is (width, height)."""
    import torch

    if not prompts or not weights or not seeds:
        raise ValueError("the sample grid needs at least one prompt, one weight and one seed")
    width, height = resolution
    pipe = model.pipeline(sampler)
    pipe.set_progress_bar_config(disable=True)
    state = _TrainingState(model)
    cells: dict[tuple[int, int, int], Any] = {}
    device = model.device
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=rng_devices), torch.no_grad():
            for module in state.modules:
                module.eval()
            with _grid_lora(pipe, model, lora_path, state) as set_weight:
                for wi, weight in enumerate(weights):
                    set_weight(weight)
                    for pi, prompt in enumerate(prompts):
                        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
                        latents = pipe(
                            prompt=[prompt] * len(seeds),
                            negative_prompt=[negative] * len(seeds) if negative else None,
                            num_inference_steps=steps,
                            height=height,
                            width=width,
                            guidance_scale=guidance_scale,
                            generator=generators,
                            output_type="latent",
                        ).images
                        for si, image in enumerate(_decode(pipe, latents)):
                            cells[(pi, si, wi)] = image
    finally:
        state.restore()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return cells


def compose_labelled(
    cells: dict[tuple[int, int], Image.Image],
    *,
    rows: Sequence[str],
    columns: Sequence[str],
    cell: tuple[int, int],
) -> Image.Image:
    """One labelled image from {(row, column): image}: a text label left of each row (wrapped, newlines kept), a
    header over each column."""
    from PIL import Image, ImageDraw, ImageFont

    grid = Image.new("RGB", grid_geometry(len(rows), len(columns), cell), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default()
    for col, header in enumerate(columns):
        x, _ = cell_origin(0, col, cell)
        draw.text((x + 2, 6), header, fill=INK, font=font)
    for row, label in enumerate(rows):
        _, y = cell_origin(row, 0, cell)
        draw.multiline_text((6, y + 2), _label_lines(label, cell[1]), fill=INK, font=font, spacing=2)
        for col in range(len(columns)):
            grid.paste(cells[(row, col)], cell_origin(row, col, cell))
    return grid


def _label_lines(label: str, height: int) -> str:
    """A row label fitted to the cell's height: the first parts wrapped and cut, the last line (the seed) kept."""
    *head, last = label.split("\n")
    wrapped = [piece for part in head for piece in (textwrap.wrap(part, width=34) or [""])]
    return "\n".join([*wrapped[: max(1, height // 14 - 1)], last])


def compose_grid(
    cells: dict[tuple[int, int, int], Image.Image],
    *,
    prompts: Sequence[str],
    weights: Sequence[float],
    seeds: Sequence[int],
    cell: tuple[int, int],
) -> Image.Image:
    """One labelled image: a row per (prompt, seed), a column per LoRA weight."""
    by_row = {(pi * len(seeds) + si, wi): image for (pi, si, wi), image in cells.items()}
    rows = [f"{prompt}\nseed {seed}" for prompt in prompts for seed in seeds]
    return compose_labelled(by_row, rows=rows, columns=[f"LoRA {w:g}" for w in weights], cell=cell)


def render_grid(
    model: LoadedModel,
    lora_path: Path,
    *,
    prompts: list[str],
    weights: list[float],
    seeds: list[int],
    steps: int,
    resolution: tuple[int, int],
    out_path: Path,
    negative: str = "",
    sampler: str = "euler_a",
    guidance_scale: float = 7.0,
) -> Path:
    """Render prompts × seeds × LoRA weights with the kohya file at lora_path into one labelled PNG (atomic write).
    resolution is (width, height) of each cell."""
    cells = render_cells(
        model,
        lora_path,
        prompts=prompts,
        weights=weights,
        seeds=seeds,
        steps=steps,
        resolution=resolution,
        negative=negative,
        sampler=sampler,
        guidance_scale=guidance_scale,
    )
    grid = compose_grid(cells, prompts=prompts, weights=weights, seeds=seeds, cell=resolution)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        grid.save(tmp, format="PNG")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def _decode(pipe: Any, latents: Any) -> list[Image.Image]:
    """VAE-decode in the VAE's own dtype (SDXL's stays fp32 while the UNet runs in half precision); an fp16 VAE
    flagged force_upcast (SDXL's overflows in fp16) decodes in fp32 for the moment."""
    import torch

    vae = pipe.vae
    original = next(vae.parameters()).dtype
    dtype = torch.float32 if original == torch.float16 and getattr(vae.config, "force_upcast", False) else original
    # torch's Module.to, not diffusers' override, which logs a spurious fp32-modules warning on dtype casts
    if dtype != original:
        torch.nn.Module.to(vae, dtype=dtype)
    try:
        images = vae.decode(latents.to(dtype) / vae.config.scaling_factor).sample
    finally:
        if dtype != original:
            torch.nn.Module.to(vae, dtype=original)
    return pipe.image_processor.postprocess(images.float(), output_type="pil")


@contextlib.contextmanager
def _grid_lora(pipe: Any, model: LoadedModel, lora_path: Path, state: _TrainingState) -> Iterator[Any]:
    """The file applied for the grid; yields a setter of its weight. A LyCORIS file goes through lycoris' own
    loader (diffusers reads only lora_down/lora_up), a LoRA file through diffusers as a second peft adapter."""
    if is_lycoris_file(lora_path):
        with lycoris_file_applied(model, lora_path) as set_weight:
            yield set_weight
        return
    try:
        with _second_adapter_is_expected(state.has_training_adapter):
            pipe.load_lora_weights(str(lora_path), adapter_name=GRID_ADAPTER)
        yield lambda weight: pipe.set_adapters([GRID_ADAPTER], adapter_weights=[float(weight)])
    finally:
        state.reactivate_training_adapter()  # first, so deleting the grid adapter leaves a valid active one
        if GRID_ADAPTER in _adapter_names(pipe):
            pipe.delete_adapters(GRID_ADAPTER)


def _adapter_names(pipe: Any) -> set[str]:
    try:
        return {name for names in pipe.get_list_adapters().values() for name in names}
    except (AttributeError, ValueError):
        return set()


@contextlib.contextmanager
def _second_adapter_is_expected(expected: bool) -> Iterator[None]:
    """Loading the grid adapter next to the training adapter is intended; silence the two notices that says so.

    peft warns "Already found a `peft_config` attribute in the model" when a model gets a second adapter, and
    transformers' adapter loader counts every key containing "lora" as part of the adapter it loads, so it reports
    the training adapter's weights as MISSING from the grid file. Both are about the training adapter only.
    """
    if not expected:
        yield
        return
    report_logger = logging.getLogger("transformers.integrations.peft")
    level = report_logger.level
    report_logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            yield
    finally:
        report_logger.setLevel(level)


class _TrainingState:
    """What rendering disturbs and training needs back: module modes, requires_grad flags, the active adapter."""

    def __init__(self, model: LoadedModel) -> None:
        self.model = model
        self.modules = [model.unet, model.vae, *model.text_encoders]
        self.modes = [m.training for m in self.modules]
        self.grads = {id(p): p.requires_grad for m in self.modules for p in m.parameters()}

    @property
    def has_training_adapter(self) -> bool:
        return any(
            ADAPTER in (getattr(m, "peft_config", None) or {}) for m in (self.model.unet, *self.model.text_encoders)
        )

    def reactivate_training_adapter(self) -> None:
        """Make the training adapter the active one again, at scale 1 (set_adapters changed both)."""
        for module in (self.model.unet, *self.model.text_encoders):
            if ADAPTER in (getattr(module, "peft_config", None) or {}):
                for layer in module.modules():
                    if hasattr(layer, "lora_A") and ADAPTER in layer.lora_A and hasattr(layer, "set_adapter"):
                        layer.set_adapter(ADAPTER)
                        layer.set_scale(ADAPTER, 1.0)

    def restore(self) -> None:
        for module, mode in zip(self.modules, self.modes, strict=True):
            module.train(mode)
        for module in self.modules:
            for p in module.parameters():
                p.requires_grad_(self.grads.get(id(p), False))
