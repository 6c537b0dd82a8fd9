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
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpurun import events
from gpurun.runner import oom
from gpurun.runner import state as st
from gpurun.runner.data import TrainData, cache_conditioning, cache_latents, can_cache_conditioning, scan_training_data
from gpurun.runner.export import build_metadata, file_sha256, save_lora
from gpurun.runner.initweights import load_network_weights
from gpurun.runner.lora import LoraParams
from gpurun.runner.loss import StepContext, batch_loss
from gpurun.runner.lossmeter import LossMeter
from gpurun.runner.maxnorm import adapted_layers
from gpurun.runner.memory import peak_memory_gb
from gpurun.runner.model.load import load_base_model
from gpurun.runner.network import add_network, load_network_state, max_norm_step, network_state
from gpurun.runner.optim import Schedule, make_optimizer, schedule_for
from gpurun.runner.precision import Precision, choose_precision, gpu_name
from gpurun.runner.sample import grid_prompts, render_grid
from gpurun.runner.speed import (
    StepSpeed,
    lora_input_cast_on,
    move_latents,
    step_generator,
    tune_device,
    tune_for_training,
)
from gpurun.runner.stop import STOPPED_EXIT, StopRequest

if TYPE_CHECKING:
    from gpurun.runner.model.loaded import LoadedModel
    from gpurun.trainconfig import TrainConfig

Emit = Callable[[events.Event], None]
LOSS_WINDOW = 25
STEP_EVENT_EVERY_S = 0.5


class Trainer:
    """One run of the runner. `run()` returns the process exit code."""

    def __init__(
        self,
        config: TrainConfig,
        *,
        resume: bool | str = False,
        emit: Emit = events.emit,
        install_signals: bool = True,
        speed: StepSpeed | None = None,
    ) -> None:
        self.config = config
        self.speed = speed or StepSpeed()
        self.speed_notes: list[str] = []
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
        cache_latents(model, data.images, disk_dir=disk)
        if self.speed.device_data:
            move_latents(data.images, model.device)
        use_cond_cache = can_cache_conditioning(config, data)
        if use_cond_cache:
            data.cond_cache = cache_conditioning(model, [i.caption for i in data.images], config.clip_skip)

        progress = st.initial_progress(config, data, model.family)
        saved = None
        if self.resume:
            folder = Path(self.resume) if isinstance(self.resume, str) else st.resume_dir(self.out)
            saved_progress, lora_weights, optimizer_state, rng_state = st.load_state(folder)
            st.check_fingerprint(saved_progress.fingerprint, progress.fingerprint, folder)
            progress, saved = saved_progress, (lora_weights, optimizer_state, rng_state)

        self.speed_notes = tune_device(model, self.speed)  # before LoRA: only the base changes its memory layout
        lora = add_network(model, config, seed=progress.seed)
        if config.network_weights and saved is None:  # a resumed state already holds what training made of it
            lora.counts.update(load_network_weights(model, Path(config.network_weights)))
        if progress.gradient_checkpointing:
            model.enable_gradient_checkpointing(text_encoders=config.trains_text_encoder)
        self.speed_notes += tune_for_training(model, self.speed)
        optimizer = make_optimizer(
            config.optimizer_type,
            lora.param_groups(config.effective_unet_lr, config.text_encoder_lrs(len(model.text_encoders))),
            config.optimizer_args,
            precision.device,
        )
        schedule = schedule_for(config, progress.total_steps)
        generator = step_generator(progress.seed, precision.device, self.speed)
        rng = random.Random(progress.seed)
        if saved is not None:
            lora_weights, optimizer_state, rng_state = saved
            load_network_state(model, lora_weights)
            optimizer.load_state_dict(optimizer_state)
            generator.set_state(rng_state["generator"])
            rng.setstate(st.python_rng_from_plain(rng_state["python"]))
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])  # a resumed optimizer brings its own (the base lr)
        lr_scheduler = schedule.attach(optimizer)  # LambdaLR counts optimizer steps in last_epoch
        if progress.step:
            lr_scheduler.last_epoch = progress.step
            for group, base in zip(optimizer.param_groups, lr_scheduler.base_lrs, strict=True):
                group["lr"] = base * schedule.factor(progress.step)

        ctx = StepContext(model, data, config, precision.weight_dtype, generator, rng, use_cond_cache, self.speed)
        self.emit(self._start_event(model, data, precision, progress, lora))
        if self.stop.requested:  # SIGTERM while loading: nothing learned yet, nothing to save
            self.emit(events.ErrorEvent(message="stopped before training began", code="stopped"))
            return STOPPED_EXIT
        return _Loop(self, ctx, lora, optimizer, lr_scheduler, schedule, precision, progress, prompts).run()

    def _start_event(
        self, model: LoadedModel, data: TrainData, precision: Precision, progress: st.Progress, lora: LoraParams
    ) -> events.Start:
        kohya = [f"{k}: {why}" for k, why in self.config.kohya_notes().items()]
        notes = [*precision.notes, *self.speed_notes, *kohya]
        if data.cond_cache:
            notes.append(f"text-encoder outputs cached for {len(data.cond_cache)} captions (text encoders frozen)")
        return events.Start(
            device=f"{precision.device}" + (f" ({gpu_name()})" if precision.device == "cuda" else ""),
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
        self.losses = LossMeter(progress.loss_window, LOSS_WINDOW)
        self.lora_layers = adapted_layers([ctx.model.unet, *ctx.model.text_encoders])

    def run(self) -> int:
        p, accum = self.p, self.config.gradient_accumulation_steps
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
                    if not oom.is_out_of_memory(exc):
                        raise
                    self.optimizer.zero_grad(set_to_none=True)
                    batches = self._out_of_memory(exc, batches)
                    continue
                p.batch_in_epoch = group_end
                p.step += 1
                self._after_step(sum(losses) / len(losses), time.monotonic() - started)
                every = self.config.save_every_n_steps
                if every and p.step % every == 0 and p.step < p.total_steps:
                    self._save_lora(f"{self.config.output_name}-step{p.step:08d}.safetensors", p.epoch)
                    self._save_state()
                if self.t.stop.requested:
                    return self._stop_now()
            if p.batch_in_epoch >= len(batches):
                self._end_of_epoch()
        return self._finish()

    def _out_of_memory(self, exc: BaseException, batches: list[list[int]]) -> list[list[int]]:
        """Free memory and apply the policy's next change (gradient checkpointing, then half the batch, else give
        up); returns this epoch's batches, re-cut when the batch size changed."""
        oom.free_memory()
        p, config = self.p, self.config
        action = oom.next_action(
            oom.OomState(
                step=p.step,
                gradient_checkpointing=p.gradient_checkpointing,
                batch_size=p.batch_size,
                remaining_batches=tuple(len(b) for b in batches[p.batch_in_epoch :]),
                epoch=p.epoch,
                epochs=p.epochs,
                total_steps=p.total_steps,
                gradient_accumulation_steps=config.gradient_accumulation_steps,
                steps_fixed=bool(config.max_train_steps),
                batches_per_epoch_at_half=self.ctx.data.batches_per_epoch(oom.half_batch(p.batch_size)),
                error=str(exc),
            )
        )
        if isinstance(action, oom.GiveUp):
            raise action.error()
        if isinstance(action, oom.EnableCheckpointing):
            self.ctx.model.enable_gradient_checkpointing(text_encoders=config.trains_text_encoder)
            p.gradient_checkpointing = True
        else:  # oom.HalveBatch
            p.batch_size = action.batch_size
            batches = oom.split_batches(batches, p.batch_in_epoch, action.batch_size)
            # the policy keeps the total when max_train_steps fixes it; the schedule stretches with it otherwise
            p.total_steps = self.schedule.total = action.total_steps
        p.changes.append(action.message)
        self.emit(events.WarningEvent(message=action.message, code="out-of-memory"))
        return batches

    def _backward(self, indices: list[int], group_size: int) -> Any:
        """Forward and backward of one batch; returns its loss, a device tensor unless the reference path syncs."""
        loss = batch_loss(self.ctx, indices)
        scaled = loss / group_size
        if self.precision.scaler is not None:
            scaled = self.precision.scaler.scale(scaled)
        scaled.backward()
        return loss.detach() if self.t.speed.defer_loss_sync else float(loss.detach())

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
        if self.config.scale_weight_norms:
            max_norm_step(self.ctx.model, self.lora_layers, self.config.scale_weight_norms)

    def _after_step(self, loss: Any, seconds: float) -> None:
        p = self.p
        self.losses.add(loss)
        self.step_seconds = [*self.step_seconds, seconds][-LOSS_WINDOW:]
        now = time.monotonic()
        if now - self.last_event < STEP_EVENT_EVERY_S and p.step not in (1, p.total_steps):
            return
        # without a per-step sync a step's seconds are only its dispatch time; reading the losses waits for the
        # queued steps, and counting that wait keeps the window's sum the wall time the steps took
        p.loss_window = self.losses.window()
        self.last_event = time.monotonic()
        self.step_seconds[-1] += self.last_event - now
        per_step = sum(self.step_seconds) / len(self.step_seconds)
        samples = p.batch_size * self.config.gradient_accumulation_steps
        memory_gb, memory_kind = peak_memory_gb(self.ctx.model.device)
        self.emit(
            events.Step(
                epoch=p.epoch,
                epochs=p.epochs,
                step=p.step,
                total_steps=p.total_steps,
                loss=p.loss_window[-1],
                loss_avg=sum(p.loss_window) / len(p.loss_window),
                lr=float(self.optimizer.param_groups[0]["lr"]),
                samples_per_s=samples / per_step if per_step > 0 else 0.0,
                eta_s=per_step * (p.total_steps - p.step),
                memory_gb=round(memory_gb, 3),
                memory_kind=memory_kind,
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
        data, p, config = self.ctx.data, self.p, self.config
        facts = data.facts()
        folders = data.scan.folders
        dataset = {
            "tag_frequency": data.scan.tag_frequency(),
            # kohya: training and regularization folders apart, each with its own repeats
            "dataset_dirs": {
                f.name: {"n_repeats": f.repeats, "img_count": len(f.items)} for f in folders if not f.is_reg
            },
            "reg_dataset_dirs": {
                f.name: {"n_repeats": f.repeats, "img_count": len(f.items)} for f in folders if f.is_reg
            },
            "num_train_images": sum(f.samples_per_epoch for f in folders if not f.is_reg),
            "num_reg_images": sum(f.repeats * len(f.items) for f in folders if f.is_reg),
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
            extra["ss_training_comment"] = "; ".join(
                [*([config.training_comment] if config.training_comment else []), *p.changes]
            )
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
        self.p.loss_window = self.losses.window()
        rng = {"generator": self.ctx.generator.get_state(), "python": st.plain_python_rng(self.ctx.rng.getstate())}
        st.save_state(st.resume_dir(self.out), self.p, network_state(self.ctx.model), self.optimizer.state_dict(), rng)

    def _grid(self, lora_path: Path, name: str, epoch: int) -> None:
        config = self.config
        detail = f"{len(self.prompts)} prompts x {len(config.sample_weights)} weights"
        self.emit(events.Phase(name="sampling", detail=detail))
        with lora_input_cast_on(self.ctx.model):  # the grid runs outside autocast
            path = self._render(lora_path, name)
        sha, size = file_sha256(path)
        self.emit(events.Sample(path=name, sha256=sha, bytes=size, epoch=epoch))

    def _render(self, lora_path: Path, name: str) -> Path:
        config = self.config
        return render_grid(
            self.ctx.model,
            lora_path,
            prompts=self.prompts,
            weights=config.sample_weights,
            seeds=config.sample_seeds,
            steps=config.sample_steps,
            # a "512,650" training area (bucketing) renders at the nearest size the pipeline takes: multiples of 8
            resolution=(
                config.resolution[0] - config.resolution[0] % 8,
                config.resolution[1] - config.resolution[1] % 8,
            ),
            out_path=self.out / name,
            sampler=config.sample_sampler,
        )
