"""`python -m gpurun.runner.sampling --config sample.json`: render sample grids for LoRA files, events on stdout.

For each LoRA file, a grid of prompts × seeds (rows) by LoRA weight (columns), as training's final grid; with
several files (a run's epochs), also a comparison grid: file × prompt (rows) by seed (columns) at one weight, to
pick the best epoch by eye. The base model is loaded once. Exit codes as the trainer's: 0 done, 1 failed (an
error event says why), 2 bad invocation.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import time
import traceback
from pathlib import Path

from gpurun import events
from gpurun.errors import ConfigError, GpurunError
from gpurun.runner.quiet import quiet_libraries
from gpurun.samplejob import SampleJob

COMPARE_NAME = "compare-grid.png"


def grid_name(lora: str) -> str:
    return f"{Path(lora).stem}-grid.png"


def _emit_file(path: Path, root: Path, epoch: int) -> None:
    data = path.read_bytes()
    events.emit(events.Sample(path=str(path.relative_to(root)), sha256=hashlib.sha256(data).hexdigest(),
                              bytes=len(data), epoch=epoch))  # fmt: skip


def run(job: SampleJob, job_dir: Path) -> int:
    """Render every grid of `job`; paths in it are relative to `job_dir`."""
    import torch  # the sampler's stack; the module itself imports without it (the client validates jobs)

    from gpurun.runner.model.load import load_base_model
    from gpurun.runner.precision import choose_precision
    from gpurun.runner.sample import compose_labelled, render_cells, render_grid

    started = time.monotonic()
    out = (job_dir / job.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    loras = [(job_dir / name).resolve() for name in job.loras]
    missing = [str(p) for p in loras if not p.is_file()]
    if missing:
        raise ConfigError("LoRA file not found on the machine", where=missing[0])
    precision = choose_precision("auto")
    events.emit(events.Phase(name="load_model", detail=job.pretrained_model_name_or_path))
    model = load_base_model(
        job.pretrained_model_name_or_path, v2=job.v2, v_parameterization=job.v_parameterization,
        family=job.model_family, device=precision.device, weight_dtype=precision.weight_dtype,
    )  # fmt: skip
    model.unet.requires_grad_(False)
    cell = (job.width, job.height)
    dtype = str(precision.weight_dtype).replace("torch.", "")
    start = events.Start(device=precision.device, dtype=dtype, family=model.family, epochs=len(loras))
    events.emit(start)
    for index, lora in enumerate(loras):
        events.emit(events.Phase(name="sampling", detail=f"{job.label_of(index)}: {len(job.prompts)} prompts × "
                                 f"{len(job.seeds)} seeds × {len(job.weights)} weights"))  # fmt: skip
        path = render_grid(model, lora, prompts=job.prompts, weights=job.weights, seeds=job.seeds, steps=job.steps,
                           resolution=cell, out_path=out / grid_name(job.loras[index]), negative=job.negative_prompt,
                           sampler=job.sampler, guidance_scale=job.guidance_scale)  # fmt: skip
        _emit_file(path, out, index + 1)
    if len(loras) > 1:
        events.emit(events.Phase(name="sampling", detail=f"comparison of {len(loras)} files at {job.compare_weight:g}"))
        cells = {}
        for index, lora in enumerate(loras):
            rendered = render_cells(model, lora, prompts=job.prompts, weights=[job.compare_weight], seeds=job.seeds,
                                    steps=job.steps, resolution=cell, negative=job.negative_prompt,
                                    sampler=job.sampler, guidance_scale=job.guidance_scale)  # fmt: skip
            for (pi, si, _), image in rendered.items():
                cells[(index * len(job.prompts) + pi, si)] = image
        rows = [f"{prompt}\n{job.label_of(i)}" for i in range(len(loras)) for prompt in job.prompts]
        columns = [f"seed {seed}" for seed in job.seeds]
        grid = compose_labelled(cells, rows=rows, columns=columns, cell=cell)
        target = out / COMPARE_NAME
        tmp = target.with_name(f".{target.name}.tmp")
        grid.save(tmp, format="PNG")
        tmp.replace(target)
        _emit_file(target, out, 0)
    if precision.device == "cuda":
        torch.cuda.synchronize()
    events.emit(events.Done(steps=0, epochs=len(loras), seconds=time.monotonic() - started))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpurun.runner.sampling",
        description="Render sample grids for LoRA files; JSON-lines events on stdout.",
    )
    parser.add_argument("--config", required=True, help="the sample job (sample.json; paths relative to it)")
    args = parser.parse_args(argv)
    quiet_libraries()
    try:
        job = SampleJob.from_file(args.config)
        return run(job, Path(args.config).resolve().parent)
    except GpurunError as exc:
        events.emit(events.ErrorEvent(message=exc.one_line(), hint=exc.hint or "", code=type(exc).__name__))
        return 1
    except Exception as exc:  # the client shows this; the traceback goes to stderr for `gpurun logs`
        traceback.print_exc(file=sys.stderr)
        message = f"the sampler crashed: {type(exc).__name__}: {exc}"
        hint = "see runner.stderr (gpurun logs RUN) for the traceback"
        events.emit(events.ErrorEvent(message=message, hint=hint, code="crash"))
        return 1


if __name__ == "__main__":
    sys.exit(main())
