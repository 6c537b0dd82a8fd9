"""One rule for every kohya key: implemented, accepted because it has no effect (always or at the value given), or
refused with the reason and what to use instead.

The table is data, read by `TrainConfig` (which keys it takes, which it accepts without a field, which it refuses),
by `gpurun config check` (what it says about each key present) and by docs/kohya-keys.md (generated from here;
a test keeps the two equal). Keys the kohya_ss GUI writes that are not sd-scripts arguments are listed too.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

Status = Literal["implemented", "gpurun", "no-op", "no-op at", "refused"]
#: the order statuses are listed in (docs, `config keys`)
STATUSES: tuple[Status, ...] = ("implemented", "no-op at", "no-op", "refused", "gpurun")


@dataclass(frozen=True, slots=True)
class KohyaKey:
    """One key: its status and the sentence that explains it (kohya's meaning, why it has no effect, or why it
    is refused and what to use instead). `values` are the values a "no-op at" key is accepted at."""

    name: str
    status: Status
    note: str
    values: tuple[Any, ...] = ()

    def accepts(self, value: Any) -> bool:
        """Whether `value` is accepted without a field: always for no-op keys, at the listed values for no-op-at."""
        if self.status == "no-op":
            return True
        if self.status != "no-op at":
            return False
        return any(_same(value, v) for v in self.values)

    def describe_values(self) -> str:
        return " or ".join(_show(v) for v in self.values)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b)
    if isinstance(a, str) and isinstance(b, str):
        return a.strip().lower() == b.lower()
    return bool(a == b)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


KEYS: dict[str, KohyaKey] = {}


def _add(status: Status, names: str, note: str, values: tuple[Any, ...] = ()) -> None:
    for name in names.split():
        if name in KEYS:
            raise ValueError(f"kohya key {name} is listed twice")
        KEYS[name] = KohyaKey(name, status, note, values)


_FALSE = (False,)
_ZERO = (0,)

# ---- implemented with kohya's meaning (a TrainConfig field each) --------------------------------------------------
_add("implemented", "pretrained_model_name_or_path vae", "the base model (hub id, diffusers folder or single file)")
_add("implemented", "v2 v_parameterization", "SD 2.x base / v-prediction target, as kohya")
_add("implemented", "clip_skip", "use the output of the n-th last CLIP layer")
_add("implemented", "train_data_dir", "kohya's folder layout: <repeats>_<name>/ with captions beside the images")
_add(
    "implemented",
    "dataset_config",
    "kohya's dataset config TOML ([general], one [[datasets]], [[datasets.subsets]] with per-subset repeats, "
    "captions, class tokens, augmentation and is_reg); relative image_dir paths are relative to the file's folder",
)
_add(
    "implemented",
    "reg_data_dir",
    "regularization images in <repeats>_<class>/ folders, repeated to match the training images as kohya does",
)
_add("implemented", "prior_loss_weight", "the loss weight of regularization images, as kohya")
_add("implemented", "resolution", 'training size: 512, "512" or "width,height"')
_add("implemented", "train_batch_size", "images per step (also spelt batch_size)")
_add(
    "implemented",
    "enable_bucket min_bucket_reso max_bucket_reso bucket_reso_steps bucket_no_upscale",
    "aspect-ratio bucketing, kohya's arithmetic (gpurun.buckets); bucket_reso_steps is unused without buckets",
)
_add("implemented", "caption_extension shuffle_caption keep_tokens caption_dropout_rate", "captions, as kohya")
_add("implemented", "flip_aug", "horizontally flipped latents are cached and picked at random")
_add("implemented", "cache_latents cache_latents_to_disk cache_text_encoder_outputs", "caching, as kohya")
_add("implemented", "output_dir output_name save_precision save_every_n_epochs", "where and how the LoRA is saved")
_add("implemented", "save_every_n_steps", "also save <output_name>-step<N> and the state every N steps (0 = off)")
_add("implemented", "save_model_as", 'only "safetensors" (what every loader reads)')
_add("implemented", "max_train_epochs max_train_steps", "run length; steps win when both are given")
_add("implemented", "learning_rate unet_lr", "base and UNet learning rate")
_add(
    "implemented",
    "text_encoder_lr",
    "one value, or a list with one value per text encoder (the GUI writes [a, b]); a list whose values differ "
    "trains SDXL's second encoder at its own rate, where kohya's networks.lora would use the first for both",
)
_add(
    "implemented",
    "lr_scheduler",
    "constant, constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial; adafactor with Adafactor",
)
_add("implemented", "lr_warmup_steps", "warmup steps; a fraction below 1 (0.1) is that share of the run, as kohya")
_add("implemented", "lr_scheduler_num_cycles lr_scheduler_power", "shape of cosine_with_restarts / polynomial")
_add(
    "implemented",
    "network_module",
    "networks.lora (kohya's LoRA, and its LoCon with conv_dim in network_args) or lycoris.kohya (LyCORIS through the "
    "lycoris-lora package: LoCon, LoHa, LoKr, Diag-OFT, DoRA with dora_wd)",
)
_add("implemented", "network_dim network_alpha", "LoRA rank and alpha (scale alpha/rank)")
_add(
    "implemented",
    "network_args",
    "networks.lora: conv_dim and conv_alpha (kohya's LoCon). lycoris.kohya: algo (locon, loha, lokr, diag-oft), "
    "preset, conv_dim, conv_alpha, factor, use_tucker, use_scalar, train_norm, dora_wd, wd_on_output, bypass_mode, "
    "dropout, rank_dropout, module_dropout, constraint, rescaled, decompose_both, full_matrix, rs_lora, "
    "unbalanced_factorization. Any other argument or value is refused by name",
)
_add(
    "implemented",
    "network_weights",
    "start from a kohya LoRA file (continued training); its rank, alpha and base family are checked before renting",
)
_add("implemented", "dim_from_weights", "take network_dim/network_alpha (and LoCon's conv_dim) from network_weights")
_add("implemented", "network_train_unet_only", "freeze the text encoders (no lora_te keys in the file)")
_add(
    "implemented",
    "optimizer_type",
    "AdamW, AdamW8bit, Adafactor, Prodigy, Lion, Lion8bit, PagedLion8bit, DAdaptation (DAdaptAdamPreprint), "
    "DAdaptAdam, DAdaptAdaGrad, DAdaptAdan, DAdaptAdanIP, DAdaptLion, DAdaptSGD, in any case; D-Adaptation and "
    "Prodigy need one learning rate for every group (usually 1.0)",
)
_add(
    "implemented",
    "optimizer_args",
    'key=value arguments of the optimizer, e.g. ["weight_decay=0.01"]; one the optimizer does not take is refused',
)
_add("implemented", "use_lion_optimizer", 'kohya\'s older spelling of optimizer_type = "Lion"')
_add("implemented", "use_8bit_adam", 'kohya\'s older spelling of optimizer_type = "AdamW8bit"')
_add("implemented", "mixed_precision", "no, fp16, bf16 (LoRA weights stay fp32)")
_add("implemented", "gradient_checkpointing gradient_accumulation_steps max_grad_norm seed", "as kohya")
_add("implemented", "noise_offset noise_offset_random_strength", "offset noise, optionally of random strength")
_add("implemented", "adaptive_noise_scale", "adds the absolute latent mean x this to noise_offset (needs noise_offset)")
_add("implemented", "multires_noise_iterations multires_noise_discount", "pyramid (multi-resolution) noise")
_add("implemented", "ip_noise_gamma ip_noise_gamma_random_strength", "input perturbation noise")
_add("implemented", "min_timestep max_timestep", "the range training timesteps are drawn from")
_add("implemented", "min_snr_gamma debiased_estimation_loss", "loss weighting by timestep SNR")
_add(
    "implemented", "loss_type huber_c huber_schedule huber_scale", "l2, l1, huber or smooth_l1 loss, kohya's schedules"
)
_add("implemented", "training_comment", "written into the file's ss_training_comment")
_add(
    "implemented",
    "metadata_title metadata_author metadata_description metadata_license metadata_tags",
    "written into the file's modelspec.title/author/description/license/tags (the title defaults to output_name)",
)
_add("implemented", "scale_weight_norms", "max-norm regularization of each LoRA's weight change after every step")
_add(
    "implemented",
    "network_dropout",
    "dropout on each LoRA's rank activations while training (networks.lora; lycoris.kohya does not read it, so "
    "it is refused there: use dropout= in network_args)",
)
_add("implemented", "sample_prompts sample_every_n_epochs sample_sampler", "the sample grid")

# ---- gpurun's own keys --------------------------------------------------------------------------------------------
_add("gpurun", "model_family", "force the base family (sd15, sd2, sdxl) instead of detecting it")
_add("gpurun", "resume", "true: continue from the state in output_dir; a path: from that state folder")
_add("gpurun", "sample_seeds sample_weights sample_steps", "the sample grid's seeds, LoRA weights and steps")

# ---- accepted at any value: no effect on what is trained ----------------------------------------------------------
_add("no-op", "xformers sdpa mem_eff_attn", "gpurun always uses PyTorch SDPA attention")
_add("no-op", "logging_dir log_with log_prefix log_tracker_name log_tracker_config log_config", "progress is events")
_add("no-op", "wandb_run_name wandb_api_key", "progress is streamed as events; nothing is sent to Weights & Biases")
_add("no-op", "max_data_loader_n_workers persistent_data_loader_workers", "latents are cached; no loader workers")
_add("no-op", "lowram highvram", "memory placement is gpurun's")
_add("no-op", "save_state", "gpurun always saves a resumable state")
_add("no-op", "no_half_vae", "gpurun keeps the VAE in fp32 where half precision is unsafe")
_add("no-op", "full_fp16 full_bf16", "LoRA parameters stay fp32 under mixed precision")
_add("no-op", "vae_batch_size", "latents are encoded once, before training; the batch only changes the speed")
_add("no-op", "dynamo_backend", "gpurun does not compile the model")
_add("no-op", "epoch", "kohya_ss GUI field that sd-scripts does not read (the GUI turns it into max_train_steps)")

# ---- accepted only at the value where they change nothing ---------------------------------------------------------
_add("no-op at", "lr_scheduler_args", "no extra scheduler arguments are taken", ([],))
_add("no-op at", "lr_scheduler_type", "gpurun's schedulers are lr_scheduler's names", ("",))
_add("no-op at", "max_token_length", "prompts are 75 tokens (150/225 need kohya's chunked encoding)", (75,))
_add(
    "no-op at",
    "noise_offset_type",
    "kohya_ss GUI field: Original (noise_offset) or Multires (multires_noise_*); it only picks which keys it writes",
    ("Original", "Multires"),
)
_add("no-op at", "caption_dropout_every_n_epochs caption_tag_dropout_rate", "caption dropout variants", (0, 0.0))
_add("no-op at", "stop_text_encoder_training", "the text encoder trains the whole run", (0,))
_add("no-op at", "v_pred_like_loss", "not implemented", (0, 0.0))
_add("no-op at", "zero_terminal_snr", "the base model's noise schedule is used as it is", _FALSE)
_add("no-op at", "scale_v_pred_loss_like_noise_pred", "not implemented", _FALSE)
_add("no-op at", "masked_loss alpha_mask", "masks are not implemented", _FALSE)
_add("no-op at", "weighted_captions", "caption weighting (a:1.2) is not implemented", _FALSE)
_add("no-op at", "color_aug random_crop", "images are centre-cropped to their bucket", _FALSE)
_add("no-op at", "network_train_text_encoder_only", "the UNet is always trained", _FALSE)
_add("no-op at", "fp8_base fp8_base_unet", "the base weights are fp16/bf16/fp32", _FALSE)
_add("no-op at", "sample_every_n_steps save_last_n_steps", "", _ZERO)
_add("no-op at", "save_last_n_epochs", "every checkpoint is kept", _ZERO)
_add(
    "no-op at",
    "save_last_n_epochs_state save_last_n_steps_state",
    "gpurun keeps one resumable state, the latest: kohya's value 1 (0 leaves it to save_last_n_epochs/_steps)",
    (0, 1),
)
_add("no-op at", "save_state_on_train_end", "gpurun always saves a resumable state", (True, False))
_add("no-op at", "huggingface_repo_id huggingface_path_in_repo huggingface_repo_type", "no uploads", ("",))

# ---- refused ------------------------------------------------------------------------------------------------------
_REFUSED = {
    "sample_every_n_steps": "step-based sampling is not implemented; use sample_every_n_epochs",
    "save_last_n_steps": "gpurun keeps every checkpoint; delete old ones after the run",
    "save_last_n_steps_state": "gpurun keeps exactly one resumable state, the latest; older ones cannot be kept",
    "save_last_n_epochs": "gpurun keeps every checkpoint; delete old ones after the run",
    "save_last_n_epochs_state": "gpurun keeps exactly one resumable state, the latest; older ones cannot be kept",
    "v_pred_like_loss": "not implemented; leave it 0",
    "zero_terminal_snr": "not implemented; train on the base model's schedule",
    "scale_v_pred_loss_like_noise_pred": "not implemented",
    "masked_loss": "masked loss is not implemented",
    "alpha_mask": "masked loss is not implemented",
    "weighted_captions": "caption weighting is not implemented; remove the (word:1.2) weights",
    "color_aug": "colour augmentation is not implemented (kohya refuses it with cached latents too)",
    "random_crop": "random crop is not implemented (kohya refuses it with cached latents too)",
    "network_train_text_encoder_only": "training only the text encoder is not implemented",
    "stop_text_encoder_training": "stopping text-encoder training part-way is not implemented",
    "caption_dropout_every_n_epochs": "not implemented; use caption_dropout_rate",
    "caption_tag_dropout_rate": "not implemented; use caption_dropout_rate",
    "fp8_base": "fp8 base weights are not implemented",
    "fp8_base_unet": "fp8 base weights are not implemented",
    "max_token_length": "only 75-token prompts are supported; shorten the captions (kohya truncates too)",
    "lr_scheduler_args": "extra scheduler arguments are not taken; use lr_scheduler_num_cycles/_power",
    "lr_scheduler_type": "custom scheduler classes are not supported; use lr_scheduler",
    "huggingface_repo_id": "gpurun does not upload; the LoRA comes back to this machine",
    "huggingface_path_in_repo": "gpurun does not upload",
    "huggingface_repo_type": "gpurun does not upload",
}

_add("refused", "lr_decay_steps lr_scheduler_timescale lr_scheduler_min_lr_ratio", "use lr_scheduler's names")
_add("refused", "base_weights base_weights_multiplier", "merging LoRAs into the base is not implemented")
_add("refused", "in_json dataset_class dataset_repeats conditioning_data_dir", "use train_data_dir's folder layout")
_add("refused", "face_crop_aug_range", "not implemented")
_add("refused", "token_warmup_min token_warmup_step", "not implemented")
_add("refused", "optimizer_schedulefree_wrapper schedulefree_wrapper_args", "schedule-free optimizers: not implemented")
_add("refused", "weighting_scheme logit_mean logit_std mode_scale", "SD3/Flux options; gpurun trains SD 1.x/2.x/XL")
_add("refused", "initial_epoch initial_step skip_until_initial_step", "use resume to continue a run")
_add("refused", "validation_split validation_seed validate_every_n_epochs validate_every_n_steps", "not implemented")
_add("refused", "max_validation_steps", "validation is not implemented")
_add("refused", "perlin_noise", "removed from sd-scripts; use multires_noise_iterations")
_add("refused", "torch_compile", "not implemented")
_add("refused", "fused_backward_pass", "not implemented")
_add("refused", "output_config config_file", "give gpurun the config file itself")


def refusal(name: str) -> str | None:
    """Why a key present with a value it does not accept is refused (None when the key is unknown)."""
    entry = KEYS.get(name)
    if entry is None:
        return None
    if entry.status == "refused":
        return entry.note
    if entry.status == "no-op at":
        why = _REFUSED.get(name, entry.note)
        return f"{why} (accepted only as {entry.describe_values()})"
    return None


def no_op_note(name: str, value: Any) -> str | None:
    """What `config check` says about a key accepted without effect at `value` (None when it has an effect)."""
    entry = KEYS.get(name)
    if entry is None or not entry.accepts(value):
        return None
    if entry.status == "no-op":
        return entry.note
    return f"no effect at {_show(value)}" + (f": {entry.note}" if entry.note else "")


def counts() -> dict[str, int]:
    """How many kohya keys have each status (gpurun's own keys are not kohya keys and are counted apart)."""
    out: dict[str, int] = dict.fromkeys(STATUSES, 0)
    for entry in KEYS.values():
        out[entry.status] += 1
    return out


def markdown() -> str:
    """docs/kohya-keys.md: every key and its status, generated from KEYS."""
    lines = [
        "# kohya keys in gpurun",
        "",
        "<!-- generated from gpurun/kohya_keys.py by `python scripts/kohya_keys_doc.py`; do not edit -->",
        "",
        "Every `train_network.py` argument (and kohya_ss GUI field) gpurun knows has one rule: **implemented** with",
        "kohya's meaning, **no-op** (accepted at any value: it changes nothing gpurun trains), **no-op at** (accepted",
        "only at the values listed, where it changes nothing; other values are refused with the reason), or",
        "**refused** with the reason and what to use instead. `gpurun config check` says which no-op keys it met.",
        "Keys not listed are refused as unknown.",
        "",
    ]
    tally = counts()
    lines.append(", ".join(f"{tally[s]} {s}" for s in STATUSES) + ".")
    lines.append("")
    for status in STATUSES:
        lines += [f"## {status}", "", "| key | " + ("accepted as | " if status == "no-op at" else "") + "note |"]
        lines.append("|---|" + ("---|" if status == "no-op at" else "") + "---|")
        for entry in sorted((e for e in KEYS.values() if e.status == status), key=lambda e: e.name):
            note = refusal(entry.name) if status == "no-op at" else entry.note
            middle = f" {entry.describe_values()} |" if status == "no-op at" else ""
            lines.append(f"| `{entry.name}` |{middle} {(note or '').replace('|', '/')} |")
        lines.append("")
    return "\n".join(lines)
