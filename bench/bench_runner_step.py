"""Speed and memory of one LoRA training step, as the runner takes it, for SD 1.5 and SDXL architectures.

    python bench/bench_runner_step.py                        # CUDA: full-size SD 1.5 @512 and SDXL @1024
    python bench/bench_runner_step.py --size tiny            # CPU: the tiny test topologies @64
    python bench/bench_runner_step.py --family sd15 --batch 1 4 8 --dtype bf16 fp16 --checkpointing off on
    python bench/bench_runner_step.py --family sd15 --batch 1 4 --speed reference fast --table   # before/after

Random weights (full-size architectures built from the bundled configs, nothing downloaded), kohya's default LoRA
targets injected by the runner's own add_lora, the runner's own loss (gpurun.runner.loss.batch_loss) on cached
latents and cached text-encoder outputs (the frozen-TE fast path), the runner's optimizer factory (AdamW8bit by
default) and GradScaler for fp16. Reports samples/s, ms/step, peak memory (CUDA max allocated, else process
max RSS) and the achieved TFLOP/s against the pricing model's per-image cost (1.78 TFLOP for SD 1.5 @512,
14.6 for SDXL @1024, x1.4 with gradient checkpointing), and the fraction of the GPU's dense bf16 peak.
`--speed reference` runs the step as it was before issue 10 (gpurun.runner.speed.REFERENCE: a host sync per step,
latents re-uploaded, noise drawn on the CPU, per-step rebuilds, peft's input casts); `fast` is the runner's step.
Each configuration runs its speeds back to back. Prints one JSON document, or with --table a markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

#: TFLOP per image of a LoRA step at the native resolution (gpurun.pricing's model)
STEP_TFLOP = {"sd15": 1.78, "sdxl": 14.6}
RESOLUTION = {"full": {"sd15": 512, "sdxl": 1024}, "tiny": {"sd15": 64, "sdxl": 64}}


def build(family: str, size: str, device: str, dtype: Any) -> Any:
    """A LoadedModel with random weights: the full-size architecture from the bundled configs, or the tiny one."""
    import torch
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor2_0
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from gpurun.runner.model.bundled import bundled_config_name, materialize
    from gpurun.runner.model.loaded import LoadedModel
    from gpurun.runner.model.tiny import build_tiny_pipeline

    if size == "tiny":
        pipe = build_tiny_pipeline(family)
        unet = pipe.unet
        encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    else:
        folder = materialize(bundled_config_name(family, v_prediction=False))
        with torch.device(device):
            unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(folder / "unet"))
            encoders = [CLIPTextModel(CLIPTextConfig.from_pretrained(folder / "text_encoder"))]
            if family == "sdxl":
                encoders.append(CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(folder / "text_encoder_2")))
    unet.set_attn_processor(AttnProcessor2_0())
    for module in (unet, *encoders):
        module.to(device=device, dtype=dtype).requires_grad_(False)
    return LoadedModel(
        family=family, prediction_type="epsilon", detected="bench", unet=unet, vae=None, text_encoders=encoders,
        tokenizers=[], noise_scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                                      beta_end=0.012, clip_sample=False), source="bench",
    )  # fmt: skip


class _VaeStub:
    """Only the scaling factor is read during a step (latents are cached before training)."""

    class config:
        scaling_factor = 0.18215


def bench_one(
    family: str, size: str, batch: int, dtype_name: str, checkpointing: bool, steps: int, speed_name: str = "fast"
) -> dict:
    import torch

    from gpurun.buckets import BucketChoice
    from gpurun.dataset.types import ImageItem
    from gpurun.runner.data import TrainData, TrainImage
    from gpurun.runner.lora import add_lora
    from gpurun.runner.loss import StepContext, batch_loss
    from gpurun.runner.model.loaded import Conditioning
    from gpurun.runner.optim import make_optimizer
    from gpurun.runner.speed import REFERENCE, StepSpeed, move_latents, step_generator, tune_device, tune_for_training
    from gpurun.trainconfig import TrainConfig

    speed = REFERENCE if speed_name == "reference" else StepSpeed(compile=speed_name == "compile")

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    dtype = (
        {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name] if cuda else torch.float32
    )
    model = build(family, size, device, dtype)
    model.vae = _VaeStub()
    tune_device(model, speed)
    lora = add_lora(model, rank=32, alpha=16, train_text_encoder=False, seed=0)
    if checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.unet.train()
    tune_for_training(model, speed)
    res = RESOLUTION[size][family]
    # a synthetic cached dataset: one bucket, cached latents and text-encoder outputs, as the runner holds them
    hidden = 2048 if family == "sdxl" else 768
    if size == "tiny":
        hidden = model.unet.config.cross_attention_dim
    item = ImageItem(Path("bench.png"), "1_bench", 1, "bench", None, res, res)
    choice = BucketChoice(bucket=(res, res), resized=(res, res), crop=(0, 0))
    images = [TrainImage(item, choice, latent=torch.randn(4, res // 8, res // 8)) for _ in range(batch)]
    if speed.device_data:
        move_latents(images, device)
    pooled_dim = model.text_encoders[-1].config.projection_dim if family == "sdxl" else None
    cond = Conditioning(
        torch.randn(1, 77, hidden, device=device, dtype=dtype),
        torch.randn(1, pooled_dim, device=device, dtype=dtype) if pooled_dim else None,
    )
    data = TrainData(scan=None, images=images, buckets={(res, res): list(range(batch))}, cond_cache={"bench": cond})  # type: ignore[arg-type]
    config = TrainConfig(resolution=res, batch_size=batch)
    ctx = StepContext(model, data, config, dtype, step_generator(0, device, speed), random.Random(0), True, speed)
    optimizer = make_optimizer("AdamW8bit" if cuda else "AdamW", lora.param_groups(1e-4, 0), [], device)
    scaler = torch.amp.GradScaler() if dtype == torch.float16 else None
    indices = list(range(batch))

    params = lora.all()

    def step() -> None:
        # the runner's step (gpurun.runner.train._Loop): backward, unscale, clip, step, zero
        loss = batch_loss(ctx, indices)
        (scaler.scale(loss) if scaler else loss).backward()
        if not speed.defer_loss_sync:
            float(loss.detach())  # the reference path's per-step read-back
        if scaler:
            scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
        if scaler:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    result: dict[str, Any] = {"family": family, "size": size, "resolution": res, "batch": batch, "speed": speed_name,
                              "dtype": str(dtype).replace("torch.", ""), "checkpointing": checkpointing}  # fmt: skip
    try:
        for _ in range(2):  # warm-up: kernels chosen, allocator settled, 8-bit state created
            step()
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - started) / steps
    except torch.OutOfMemoryError:
        result["error"] = "out of memory"
        return result
    result["ms_per_step"] = round(seconds * 1000, 1)
    result["samples_per_s"] = round(batch / seconds, 2)
    if cuda:
        result["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    else:
        result["max_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    if size == "full":
        tflop = STEP_TFLOP[family] * (1.4 if checkpointing else 1.0)
        result["achieved_tflops"] = round(tflop * batch / seconds, 1)
        if cuda:
            result["mfu_vs_989"] = round(tflop * batch / seconds / 989, 3)
    return result


def table(rows: list[dict]) -> str:
    """Markdown: one line per configuration, ms/step and samples/s per speed, and fast's speed-up over reference."""
    keys = ("family", "resolution", "batch", "dtype", "checkpointing")
    groups: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in keys), {})[row["speed"]] = row
    speeds = sorted({row["speed"] for row in rows}, key=["reference", "fast", "compile"].index)
    head = (
        ["family", "px", "batch", "dtype", "ckpt"]
        + [f"{s} ms/step" for s in speeds]
        + [f"{s} samples/s" for s in speeds]
    )
    head += [f"{s}/reference" for s in speeds if s != "reference" and "reference" in speeds] + ["MFU (fast)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, by_speed in groups.items():
        cells = [str(v) for v in key]
        cells += [str(by_speed.get(s, {}).get("ms_per_step", by_speed.get(s, {}).get("error", "-"))) for s in speeds]
        cells += [str(by_speed.get(s, {}).get("samples_per_s", "-")) for s in speeds]
        ref = by_speed.get("reference", {}).get("ms_per_step")
        for s in speeds:
            if s != "reference" and "reference" in speeds:
                ms = by_speed.get(s, {}).get("ms_per_step")
                cells.append(f"{ref / ms:.2f}x" if ref and ms else "-")
        cells.append(str(by_speed.get("fast", {}).get("mfu_vs_989", "-")))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    cuda = torch.cuda.is_available()
    parser.add_argument("--size", choices=["full", "tiny"], default="full" if cuda else "tiny")
    parser.add_argument("--family", nargs="+", default=["sd15", "sdxl"])
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 4, 8] if cuda else [1, 2])
    parser.add_argument("--dtype", nargs="+", default=["bf16", "fp16"] if cuda else ["fp32"])
    parser.add_argument("--checkpointing", nargs="+", default=["off", "on"])
    parser.add_argument("--steps", type=int, default=10 if cuda else 5)
    parser.add_argument("--speed", nargs="+", default=["fast"], choices=["reference", "fast", "compile"])
    parser.add_argument("--table", action="store_true", help="print a markdown table instead of JSON")
    args = parser.parse_args()
    if args.size == "full" and not cuda:
        raise SystemExit("full-size architectures need a CUDA GPU; use --size tiny on CPU")
    rows = []
    for family in args.family:
        for dtype in args.dtype:
            for gc in args.checkpointing:
                for batch in args.batch:
                    for speed in args.speed:
                        rows.append(bench_one(family, args.size, batch, dtype, gc == "on", args.steps, speed))
                        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                        if cuda:
                            torch.cuda.empty_cache()
    device = torch.cuda.get_device_name(0) if cuda else f"cpu x{torch.get_num_threads()} threads"
    if args.table:
        print(f"{device}, torch {torch.__version__}, {args.steps} timed steps after 2 warm-up\n")
        print(table(rows))
    else:
        print(json.dumps({"device": device, "torch": torch.__version__, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
