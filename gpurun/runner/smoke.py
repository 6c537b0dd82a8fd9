"""The box's smoke check: import the training stack, inject the runner's own LoRA into a tiny model, and take one
8-bit AdamW step on the box's device, in seconds.

bootstrap.sh runs it right after the environment is ready and before the base model is downloaded, so a stack
that cannot train here (a transformers that refuses this peft at adapter injection, a bitsandbytes or torch
that does not work with the host's driver) ends the rental within seconds, not after a multi-GB download:

    python -m gpurun.runner.smoke

Exit 0 with one JSON line on stdout (device, dtype, seconds, versions). On failure exit 1 with one line on
stderr, `GPURUN_SMOKE <what failed>: <error> | <package versions>`, which bootstrap.sh hands to the client.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import sys
import time
import traceback

#: the distributions whose versions a failure report names
STACK = ("torch", "diffusers", "transformers", "peft", "accelerate", "bitsandbytes", "safetensors", "huggingface-hub")


def versions() -> dict[str, str]:
    found = {}
    for name in STACK:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = "missing"
    return found


def _step() -> dict[str, object]:
    """One real LoRA training step on the tiny SD 1.5 topology; returns what it measured."""
    stage = "import the training stack"
    try:
        import accelerate  # noqa: F401  (imported by the runner's dependencies; fail here, not later)
        import bitsandbytes  # noqa: F401
        import diffusers  # noqa: F401
        import peft  # noqa: F401
        import safetensors  # noqa: F401
        import torch
        import transformers  # noqa: F401

        # inside the try, like the stack above: whatever fails to import is reported as this stage's failure
        from gpurun.runner.lora import add_lora
        from gpurun.runner.model.load import load_base_model
        from gpurun.runner.optim import make_optimizer

        device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float32
        if device == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        stage = f"build the tiny model on {device}"
        model = load_base_model("tiny-sd", device=device, weight_dtype=dtype)
        stage = "inject LoRA (peft through diffusers and transformers)"
        params = add_lora(model, rank=4, alpha=4.0, train_text_encoder=True, seed=0)
        stage = "create the 8-bit AdamW optimizer (bitsandbytes)"
        optimizer = make_optimizer("AdamW8bit", params.param_groups(1e-3, 1e-3), ["min_8bit_size=1"], device)
        stage = f"take one training step on {device}"
        generator = torch.Generator(device="cpu").manual_seed(0)
        latents = torch.randn((1, 4, 8, 8), generator=generator).to(device, dtype)
        noise = torch.randn((1, 4, 8, 8), generator=generator).to(device, dtype)
        timesteps = torch.tensor([500], device=device)
        with torch.autocast(device_type=device, dtype=dtype, enabled=device == "cuda"):
            cond = model.encode_prompt(model.tokenize(["a smoke test"]))
            noisy = model.noise_scheduler.add_noise(latents, noise, timesteps)
            prediction = model.unet(noisy, timesteps, cond.hidden_states).sample
            loss = torch.nn.functional.mse_loss(prediction.float(), noise.float())
        before = [p.detach().clone() for p in params.all()]
        loss.backward()
        optimizer.step()
        changed = sum(int(not torch.equal(b, p.detach())) for b, p in zip(before, params.all(), strict=True))
        if not torch.isfinite(loss).item():
            raise RuntimeError(f"the loss is {loss.item()}")
        if changed == 0:
            raise RuntimeError("the optimizer step changed no LoRA weight")
        if device == "cuda":
            torch.cuda.synchronize()
        return {"device": device, "dtype": str(dtype).replace("torch.", ""), "loss": float(loss.item()),
                "lora_tensors_changed": changed}  # fmt: skip
    except Exception as exc:
        raise SmokeFailure(stage, exc) from exc


class SmokeFailure(Exception):
    def __init__(self, stage: str, error: BaseException) -> None:
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        super().__init__(f"{stage} failed: {type(error).__name__}: {first}"[:600])


def main() -> int:
    started = time.monotonic()
    try:
        report = _step()
    except SmokeFailure as failure:
        traceback.print_exc(file=sys.stderr)
        stack = " ".join(f"{k}={v}" for k, v in versions().items())
        sys.stderr.write(f"GPURUN_SMOKE {failure} | {stack}\n")
        return 1
    report.update(seconds=round(time.monotonic() - started, 2), versions=versions())
    sys.stdout.write(json.dumps(report, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
