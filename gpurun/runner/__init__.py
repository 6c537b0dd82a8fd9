"""The LoRA trainer that runs on the rented GPU (imports torch/diffusers/peft); never imported by the CLI.

    __main__.py   `python -m gpurun.runner --config job.toml`: run a Trainer; any failure ends as an error event
    train.py      Trainer: load, cache, inject LoRA, resume; then the step loop with its saves and OOM fallback
    oom.py        the out-of-memory policy: plain facts about the run in, the next change out (no torch)
    stop.py       SIGTERM/SIGINT: save a checkpoint and the state, exit 143
    precision.py  which device and dtypes a run trains in
    state.py      the run's progress and the resumable state folder
    data.py       kohya folders → buckets, cached latents (and text-encoder outputs) → batches
    loss.py       one batch's loss, kohya's way
    optim.py      optimizers and the stretchable lr schedule
    lora.py       LoRA injection with peft on kohya's targets
    export.py     the kohya-format .safetensors and its metadata
    sample.py     the sample grid, rendered from the saved file
    smoke.py      the box's smoke check: one tiny training step right after bootstrap
    model/        the base model: detect, load (or build a tiny one), and hold its parts

Imports between these modules go downward only (train sits on top, model/ at the bottom); torch and the rest of
the training stack are imported inside the functions that use them, so importing a module is cheap.
"""
