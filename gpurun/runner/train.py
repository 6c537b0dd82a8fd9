"""The training run: load, cache, inject LoRA, loop with checkpoints and a resumable state, export, sample grid.

Emits the gpurun.events protocol throughout. SIGTERM means "save a checkpoint and exit" (the watchdog and the
client's budget guard send it): the loop finishes the optimizer step in flight, writes `<name>-step<N>` and the
state, and exits 143. On CUDA out-of-memory the run first turns on gradient checkpointing, then halves the batch
(the epoch count holds; the step count and the schedule stretch), and says what it changed.
"""

from __future__ import annotations

import random
import signal
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpurun import events
from gpurun.dataset.check import plan_steps
from gpurun.runner import state as st
from gpurun.runner.data import TrainData, cache_conditioning, cache_latents, can_cache_conditioning, scan_training_data
from gpurun.runner.loss import StepContext, batch_loss
from gpurun.runner.optim import Schedule, make_optimizer, schedule_for
from gpurun.runner.sample import grid_prompts

if TYPE_CHECKING:
    from gpurun.config import TrainConfig
    from gpurun.runner.loaded import LoadedModel
    from gpurun.runner.lora import LoraParams

Emit = Callable[[events.Event], None]
STOPPED_EXIT = 143
LOSS_WINDOW = 25
STEP_EVENT_EVERY_S = 0.5


@dataclass
class Precision:
    device: str
    weight_dtype: Any
    label: str
    scaler: Any = None
    notes: list[str] = field(default_factory=list)


def choose_precision(mixed_precision: str) -> Precision:
    """bf16 where the GPU supports it, else fp16 (with gradient scaling); CPU trains in fp32."""
    import torch

    if not torch.cuda.is_available():
        notes = (
            [] if mixed_precision == "no" else [f"CPU: training in fp32 (mixed_precision={mixed_precision} ignored)"]
        )
        return Precision("cpu", torch.float32, "float32", notes=notes)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if mixed_precision == "no":
        return Precision("cuda", torch.float32, "float32 (TF32 matmuls)")
    bf16_ok = torch.cuda.is_bf16_supported()
    if mixed_precision == "bf16" and not bf16_ok:
        mixed_precision = "fp16"
    if mixed_precision == "bf16" or (mixed_precision == "auto" and bf16_ok):
        return Precision("cuda", torch.bfloat16, "bfloat16")
    return Precision("cuda", torch.float16, "float16 (fp32 LoRA weights, gradient scaling)", torch.amp.GradScaler())


class StopRequest:
    """SIGTERM/SIGINT set a flag the loop checks between optimizer steps."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> dict[int, Any]:
        """Take over SIGTERM/SIGINT; returns the previous handlers."""
        return {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


class Trainer:
    """One run of the runner. `run()` returns the process exit code."""

    def __init__(
        self, config: TrainConfig, *, resume: bool | str = False, emit: Emit = events.emit, install_signals: bool = True
    ) -> None:
        self.config = config
        self.install_signals = install_signals
        self.resume = resume or config.resume
        self.emit = emit
        self.out = Path(config.output_dir)
        self.stop = StopRequest()
        self.started = time.monotonic()

    # ---- setup ----------------------------------------------------------------------------------------------

    def run(self) -> int:
        """Train; SIGTERM/SIGINT are ours from the first moment, so a stop while loading still exits cleanly."""
        previous = self.stop.install() if self.install_signals else {}
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _run(self) -> int:
        import torch

        from gpurun.runner.lora import add_lora, load_lora_state
        from gpurun.runner.model import load_base_model

        config = self.config
        self.out.mkdir(parents=True, exist_ok=True)
        data = scan_training_data(config)  # before the model: a bad dataset fails in a second, not a minute
        prompts = grid_prompts(config.sample_prompts, [i.caption for i in data.images], data.trigger)
        precision = choose_precision(config.mixed_precision)
        self.emit(events.Phase(name="load_model", detail=str(config.pretrained_model_name_or_path)))
        model = load_base_model(
            config.pretrained_model_name_or_path or "",
            v2=config.v2,
            v_parameterization=config.v_parameterization,
            family=config.model_family,
            vae=config.vae,
            device=precision.device,
            weight_dtype=precision.weight_dtype,
        )
        self.emit(events.Phase(name="cache_latents", detail=f"{len(data.images)} images"))
        disk = self.out / ".cache" / "latents" if config.cache_latents_to_disk else None
        cache_latents(model, data.images, flip=config.flip_aug, disk_dir=disk)
        use_cond_cache = can_cache_conditioning(config)
        if use_cond_cache:
            data.cond_cache = cache_conditioning(model, [i.caption for i in data.images], config.clip_skip)

        progress = self._initial_progress(data, model)
        saved = None
        if self.resume:
            folder = Path(self.resume) if isinstance(self.resume, str) else st.state_dir(self.out)
            saved_progress, lora_weights, optimizer_state, rng_state = st.load_state(folder)
            st.check_fingerprint(saved_progress.fingerprint, progress.fingerprint, folder)
            progress, saved = saved_progress, (lora_weights, optimizer_state, rng_state)

        lora = add_lora(
            model,
            rank=config.network_dim,
            alpha=config.network_alpha,
            train_text_encoder=config.trains_text_encoder,
            seed=progress.seed,
        )
        if progress.gradient_checkpointing:
            self._enable_checkpointing(model)
        optimizer = make_optimizer(
            config.optimizer_type,
            lora.param_groups(config.effective_unet_lr, config.effective_text_encoder_lr),
            config.optimizer_args,
            precision.device,
        )
        schedule = schedule_for(config, progress.total_steps)
        generator = torch.Generator(device="cpu").manual_seed(progress.seed)
        rng = random.Random(progress.seed)
        if saved is not None:
            lora_weights, optimizer_state, rng_state = saved
            load_lora_state(model, lora_weights)
            optimizer.load_state_dict(optimizer_state)
            generator.set_state(rng_state["generator"])
            rng.setstate(_python_rng_state(rng_state["python"]))
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])  # a resumed optimizer brings its own (the base lr)
        lr_scheduler = schedule.attach(optimizer)  # LambdaLR counts optimizer steps in last_epoch
        if progress.step:
            lr_scheduler.last_epoch = progress.step
            for group, base in zip(optimizer.param_groups, lr_scheduler.base_lrs, strict=True):
                group["lr"] = base * schedule.factor(progress.step)

        ctx = StepContext(model, data, config, precision.weight_dtype, generator, rng, use_cond_cache)
        self.emit(self._start_event(model, data, precision, progress, lora))
        if self.stop.requested:  # SIGTERM while loading: nothing learned yet, nothing to save
            self.emit(events.ErrorEvent(message="stopped before training began", code="stopped"))
            return STOPPED_EXIT
        return _Loop(self, ctx, lora, optimizer, lr_scheduler, schedule, precision, progress, prompts).run()

    def _initial_progress(self, data: TrainData, model: LoadedModel) -> st.Progress:
        config = self.config
        batch_size = config.batch_size
        _, epochs, total = plan_steps(
            data.batches_per_epoch(batch_size),
            config.gradient_accumulation_steps,
            config.epochs,
            config.max_train_steps,
        )
        seed = config.seed if config.seed is not None else random.SystemRandom().randrange(2**31)
        fingerprint = {
            "family": model.family,
            "network_dim": config.network_dim,
            "network_alpha": float(config.network_alpha),
            "trains_text_encoder": config.trains_text_encoder,
            "samples_per_epoch": data.samples_per_epoch,
            "images": len(data.images),
        }
        return st.Progress(
            total_steps=total,
            epochs=epochs,
            batch_size=batch_size,
            gradient_checkpointing=config.gradient_checkpointing,
            seed=seed,
            fingerprint=fingerprint,
            started_at=time.time(),
            session_id=str(uuid.uuid4().int % 2**31),
        )

    def _enable_checkpointing(self, model: LoadedModel) -> None:
        model.unet.enable_gradient_checkpointing()
        if self.config.trains_text_encoder:
            for encoder in model.text_encoders:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def _start_event(
        self, model: LoadedModel, data: TrainData, precision: Precision, progress: st.Progress, lora: LoraParams
    ) -> events.Start:
        notes = [*precision.notes, *(f"{k} ignored: {why}" for k, why in self.config.ignored_keys.items())]
        if data.cond_cache:
            notes.append(f"text-encoder outputs cached for {len(data.cond_cache)} captions (text encoders frozen)")
        return events.Start(
            device=f"{precision.device}" + (f" ({_gpu_name()})" if precision.device == "cuda" else ""),
            dtype=precision.label,
            family=model.family,
            detected=model.detected,
            total_steps=progress.total_steps,
            epochs=progress.epochs,
            batch_size=progress.batch_size,
            resumed_from_step=progress.step if self.resume else 0,
            config=self.config.model_dump(mode="json"),
            dataset={**data.facts(), "lora": lora.counts},
            notes=notes,
        )


def _gpu_name() -> str:
    import torch

    return torch.cuda.get_device_name(0)


def _python_rng_state(raw: Any) -> tuple:
    version, internal, gauss = raw
    return (int(version), tuple(int(x) for x in internal), gauss)


class _Loop:
    """The epoch/step loop with its saves; split from Trainer so setup and looping read separately."""

    def __init__(
        self,
        trainer: Trainer,
        ctx: StepContext,
        lora: LoraParams,
        optimizer: Any,
        lr_scheduler: Any,
        schedule: Schedule,
        precision: Precision,
        progress: st.Progress,
        prompts: list[str],
    ) -> None:
        self.t, self.ctx, self.lora, self.optimizer = trainer, ctx, lora, optimizer
        self.lr_scheduler, self.schedule, self.precision, self.p = lr_scheduler, schedule, precision, progress
        self.prompts = prompts
        self.config = trainer.config
        self.emit = trainer.emit
        self.last_event = 0.0
        self.step_seconds: list[float] = []

    def run(self) -> int:
        from gpurun.runner.oom import OomFallback, is_out_of_memory

        p, accum = self.p, self.config.gradient_accumulation_steps
        oom = OomFallback(self, self.t._enable_checkpointing)
        self.emit(events.Phase(name="training", detail=f"{p.total_steps} steps"))
        while p.step < p.total_steps:
            batches = self.ctx.data.epoch_batches(p.epoch, p.batch_size, p.seed)
            while p.batch_in_epoch < len(batches) and p.step < p.total_steps:
                started = time.monotonic()
                group_end = min(len(batches), (p.batch_in_epoch // accum + 1) * accum)
                group = batches[p.batch_in_epoch : group_end]
                try:
                    losses = [self._backward(b, len(group)) for b in group]
                    self._optimizer_step()
                except Exception as exc:
                    if not is_out_of_memory(exc):
                        raise
                    self.optimizer.zero_grad(set_to_none=True)
                    batches = oom.recover(exc, batches)
                    continue
                p.batch_in_epoch = group_end
                p.step += 1
                self._after_step(sum(losses) / len(losses), time.monotonic() - started)
                if self.t.stop.requested:
                    return self._stop_now()
            if p.batch_in_epoch >= len(batches):
                self._end_of_epoch()
        return self._finish()

    def _backward(self, indices: list[int], group_size: int) -> float:
        loss = batch_loss(self.ctx, indices)
        scaled = loss / group_size
        if self.precision.scaler is not None:
            scaled = self.precision.scaler.scale(scaled)
        scaled.backward()
        return float(loss.detach())

    def _optimizer_step(self) -> None:
        import torch

        scaler, params = self.precision.scaler, self.lora.all()
        if scaler is not None:
            scaler.unscale_(self.optimizer)
        if self.config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, self.config.max_grad_norm)
        if scaler is not None:
            scaler.step(self.optimizer)
            scaler.update()
        else:
            self.optimizer.step()
        self.lr_scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    def _after_step(self, loss: float, seconds: float) -> None:
        p = self.p
        p.loss_window = [*p.loss_window, loss][-LOSS_WINDOW:]
        self.step_seconds = [*self.step_seconds, seconds][-LOSS_WINDOW:]
        now = time.monotonic()
        if now - self.last_event < STEP_EVENT_EVERY_S and p.step not in (1, p.total_steps):
            return
        self.last_event = now
        per_step = sum(self.step_seconds) / len(self.step_seconds)
        samples = p.batch_size * self.config.gradient_accumulation_steps
        self.emit(
            events.Step(
                epoch=p.epoch,
                epochs=p.epochs,
                step=p.step,
                total_steps=p.total_steps,
                loss=loss,
                loss_avg=sum(p.loss_window) / len(p.loss_window),
                lr=float(self.optimizer.param_groups[0]["lr"]),
                samples_per_s=samples / per_step if per_step > 0 else 0.0,
                eta_s=per_step * (p.total_steps - p.step),
            )
        )

    def _end_of_epoch(self) -> None:
        p, config = self.p, self.config
        epoch = p.epoch
        p.epoch, p.batch_in_epoch = epoch + 1, 0
        last = p.step >= p.total_steps
        save = bool(config.save_every_n_epochs) and epoch % (config.save_every_n_epochs or 1) == 0 and not last
        sample = bool(config.sample_every_n_epochs) and epoch % (config.sample_every_n_epochs or 1) == 0 and not last
        name = f"{config.output_name}-{epoch:06d}.safetensors"
        if save:
            self._save_lora(name, epoch)
            self._save_state()
        if sample:
            # the grid is rendered from a saved file (what the user will load); without a checkpoint due this
            # epoch, a scratch copy serves and is not announced
            if not save:
                name = ".cache/sample.safetensors"
                self._save_lora(name, epoch, announce=False)
            self._grid(self.out / name, f"grid-{epoch:06d}.png", epoch)

    def _stop_now(self) -> int:
        """SIGTERM: keep what was learned (a step checkpoint and the state), then exit 143."""
        name = f"{self.config.output_name}-step{self.p.step:08d}.safetensors"
        self._save_lora(name, self.p.epoch)
        self._save_state()
        self.emit(
            events.ErrorEvent(
                message=f"stopped at step {self.p.step}/{self.p.total_steps}; {name} and the state were saved",
                hint="continue later with --resume",
                code="stopped",
            )
        )
        return STOPPED_EXIT

    def _finish(self) -> int:
        p, config = self.p, self.config
        final = f"{config.output_name}.safetensors"
        self.emit(events.Phase(name="saving", detail=final))
        sha, size = self._save_lora(final, p.epochs, final=True)
        self._save_state()
        self._grid(self.out / final, "grid.png", p.epochs)
        seconds = time.monotonic() - self.t.started
        per_step = sum(self.step_seconds) / len(self.step_seconds) if self.step_seconds else 0.0
        samples = p.batch_size * config.gradient_accumulation_steps
        self.emit(
            events.Done(
                steps=p.step,
                epochs=p.epochs,
                seconds=seconds,
                samples_per_s=samples / per_step if per_step else 0.0,
                final=final,
                sha256=sha,
                bytes=size,
            )
        )
        return 0

    # ---- files ----------------------------------------------------------------------------------------------

    @property
    def out(self) -> Path:
        return self.t.out

    def _save_lora(self, name: str, epoch: int, *, final: bool = False, announce: bool = True) -> tuple[str, int]:
        from gpurun.runner.export import build_metadata, save_lora

        data, p, config = self.ctx.data, self.p, self.config
        facts = data.facts()
        dataset = {
            "tag_frequency": data.scan.tag_frequency(),
            "dataset_dirs": facts["folders"],
            "num_train_images": data.samples_per_epoch,
            "num_batches_per_epoch": data.batches_per_epoch(p.batch_size),
            "max_train_steps": p.total_steps,
            "bucket_info": {"buckets": facts["buckets"]},
            "trigger": data.trigger,
            "session_id": p.session_id,
        }
        extra: dict[str, Any] = {
            "ss_mixed_precision": self.precision.label.split(" ")[0],
            "ss_batch_size_per_device": p.batch_size,
            "ss_gradient_checkpointing": p.gradient_checkpointing,
        }
        if p.changes:
            extra["ss_training_comment"] = "; ".join(p.changes)
        metadata = build_metadata(
            config=config,
            model=self.ctx.model,
            dataset=dataset,
            epoch=epoch,
            steps=p.step,
            training_started_at=p.started_at,
            extra=extra,
        )
        sha, size = save_lora(self.ctx.model, self.out / name, metadata=metadata, precision=config.save_precision)
        if announce:
            self.emit(events.Checkpoint(path=name, sha256=sha, bytes=size, epoch=epoch, step=p.step, final=final))
        return sha, size

    def _save_state(self) -> None:
        from gpurun.runner.lora import lora_state

        rng = {"generator": self.ctx.generator.get_state(), "python": _plain_rng(self.ctx.rng.getstate())}
        st.save_state(st.state_dir(self.out), self.p, lora_state(self.ctx.model), self.optimizer.state_dict(), rng)

    def _grid(self, lora_path: Path, name: str, epoch: int) -> None:
        from gpurun.runner.export import file_sha256
        from gpurun.runner.sample import render_grid

        config = self.config
        detail = f"{len(self.prompts)} prompts x {len(config.sample_weights)} weights"
        self.emit(events.Phase(name="sampling", detail=detail))
        path = render_grid(
            self.ctx.model,
            lora_path,
            prompts=self.prompts,
            weights=config.sample_weights,
            seeds=config.sample_seeds,
            steps=config.sample_steps,
            resolution=config.resolution,
            out_path=self.out / name,
            sampler=config.sample_sampler,
        )
        sha, size = file_sha256(path)
        self.emit(events.Sample(path=name, sha256=sha, bytes=size, epoch=epoch))


def _plain_rng(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]
