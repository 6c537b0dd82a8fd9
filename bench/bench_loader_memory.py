"""Peak host memory (RSS high-water mark) and time of loading a single-file checkpoint the way the runner does.

    python bench/bench_loader_memory.py --family sd15 --dtype bf16            # writes the checkpoint once, then loads
    python bench/bench_loader_memory.py --checkpoint model.safetensors --dtype bf16 fp32

The checkpoint is a full-size random-weight one (gpurun.runner.model.fullsize, fp16, original layout, as users
download them) unless --checkpoint names a real one. Each load runs in a fresh interpreter so its peak is the
loader's alone; the baseline RSS of that interpreter after importing torch, diffusers and transformers is reported
too. Loading happens on the CPU (device=cpu) with the given training dtype: the host-RAM peak is the same before
the model moves to a GPU. Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over fork and exec, so a child of a big parent would
# report the parent's peak
CHILD = """
import json, re, sys, time
def hwm():
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", open("/proc/self/status").read()).group(1))
import torch, diffusers, transformers
from gpurun.runner.model.load import load_base_model
base = hwm()
started = time.monotonic()
model = load_base_model(sys.argv[1], weight_dtype=getattr(torch, sys.argv[2]))
seconds = time.monotonic() - started
peak = hwm()
params = sum(p.numel() for m in (model.unet, model.vae, *model.text_encoders) for p in m.parameters())
print(json.dumps({"dtype": str(model.dtype), "vae_dtype": str(model.vae_dtype), "params": params,
                  "import_rss_gib": round(base / 2**20, 2), "peak_rss_gib": round(peak / 2**20, 2),
                  "seconds": round(seconds, 1)}))
"""

DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="sd15", choices=["sd15", "sdxl"])
    parser.add_argument("--checkpoint", type=Path, help="default: a random full-size one under --workdir")
    parser.add_argument("--workdir", type=Path, default=Path(os.environ.get("TMPDIR") or "/tmp") / "gpurun-bench")
    parser.add_argument("--dtype", nargs="+", default=["bf16"], choices=list(DTYPES))
    parser.add_argument("--device", default="cpu", help="where to run the random init when writing the checkpoint")
    args = parser.parse_args()
    checkpoint = args.checkpoint or args.workdir / f"{args.family}-random-fp16.safetensors"
    if not checkpoint.is_file():
        from gpurun.runner.model.fullsize import write_random_checkpoint

        write_random_checkpoint(args.family, checkpoint, device=args.device)
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    rows = []
    for dtype in args.dtype:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD, str(checkpoint), DTYPES[dtype]], capture_output=True, text=True, env=env
        )
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        rows.append({"training_dtype": dtype, **json.loads(proc.stdout.strip().splitlines()[-1])})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    size = round(checkpoint.stat().st_size / 2**30, 2)
    print(json.dumps({"checkpoint": str(checkpoint), "checkpoint_gib": size, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
