"""TrainConfig: the training job, read from the kohya-style `training_config.toml` users already have.

Accepts the sectioned form (`[model]`, `[dataset]`, `[training]`, or any section name, as kohya flattens
sections) and the flat form. Every kohya key follows its rule in gpurun.kohya_keys: a field here (implemented),
accepted without effect and reported (no-op, always or at the value given), or refused with the reason. Unknown
keys are errors naming the key and the closest known one.
"""

from __future__ import annotations

import difflib
import json
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from gpurun import kohya_keys
from gpurun.configfiles import dataset_settings, with_weights_settings
from gpurun.errors import ConfigError
from gpurun.kohya_dataset import DATASET_KEYS, SUBSET_KEYS, load_dataset_config
from gpurun.lorainit import read_lora_weights
from gpurun.lycoris_args import LycorisArgs, parse_lycoris_args
from gpurun.network_args import NetworkArgs, NetworkArgsError, parse_network_args
from gpurun.optimizers import OptimizerArgsError, check_optimizer_args, optimizer
from gpurun.safenames import component_problem, has_control_chars

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PRESETS_DIR = Path(__file__).parent / "templates" / "presets"

#: kohya spellings that mean the same as one of our keys
ALIASES: dict[str, str] = {"train_batch_size": "batch_size"}

#: kohya keys accepted without a field because they change nothing trained (see gpurun.kohya_keys)
IGNORED_KEYS: dict[str, str] = {k: e.note for k, e in kohya_keys.KEYS.items() if e.status == "no-op"}

SECTION_OF: dict[str, str] = {}


def _section(name: str, keys: str) -> None:
    for key in keys.split():
        SECTION_OF[key] = name


_section("model", "pretrained_model_name_or_path v2 v_parameterization model_family vae clip_skip")
_section(
    "dataset",
    "train_data_dir reg_data_dir dataset_config prior_loss_weight resolution batch_size enable_bucket min_bucket_reso "
    "max_bucket_reso bucket_reso_steps "
    "bucket_no_upscale caption_extension shuffle_caption keep_tokens flip_aug caption_dropout_rate "
    "cache_latents cache_latents_to_disk cache_text_encoder_outputs",
)
_section(
    "training",
    "output_dir output_name max_train_epochs max_train_steps learning_rate unet_lr text_encoder_lr lr_scheduler "
    "lr_warmup_steps lr_scheduler_num_cycles lr_scheduler_power network_module network_dim network_alpha "
    "network_train_unet_only network_args network_weights dim_from_weights optimizer_type optimizer_args "
    "use_lion_optimizer use_8bit_adam "
    "mixed_precision save_precision "
    "save_every_n_epochs save_every_n_steps save_model_as gradient_checkpointing gradient_accumulation_steps "
    "max_grad_norm seed "
    "noise_offset min_snr_gamma max_token_length resume noise_offset_random_strength adaptive_noise_scale "
    "multires_noise_iterations multires_noise_discount ip_noise_gamma ip_noise_gamma_random_strength min_timestep "
    "max_timestep debiased_estimation_loss loss_type huber_c huber_schedule huber_scale training_comment "
    "scale_weight_norms network_dropout metadata_title metadata_author metadata_description metadata_license "
    "metadata_tags",
)
_section("sample", "sample_prompts sample_every_n_epochs sample_seeds sample_weights sample_steps sample_sampler")

#: kohya's sample_sampler names → diffusers scheduler classes (checked here, so a typo fails before renting)
SAMPLERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "lms": "LMSDiscreteScheduler",
    "k_lms": "LMSDiscreteScheduler",
    "euler": "EulerDiscreteScheduler",
    "k_euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "k_euler_a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "dpm_2": "KDPM2DiscreteScheduler",
    "k_dpm_2": "KDPM2DiscreteScheduler",
    "dpm_2_a": "KDPM2AncestralDiscreteScheduler",
    "k_dpm_2_a": "KDPM2AncestralDiscreteScheduler",
    "dpmsolver": "DPMSolverMultistepScheduler",
    "dpmsolver++": "DPMSolverMultistepScheduler",
    "dpmsingle": "DPMSolverSinglestepScheduler",
}
NETWORK_MODULES = ("networks.lora", "lycoris.kohya")
SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "adafactor")
LOSS_TYPES = ("l2", "l1", "huber", "smooth_l1")
HUBER_SCHEDULES = ("constant", "exponential", "snr")
#: the largest training side gpurun accepts: 8192 px is four times SDXL's native size (bucket search is cubic in it)
MAX_RESOLUTION = 8192
_CAPTION_EXT = re.compile(r"^\.[A-Za-z0-9_-]{1,16}$")


class TrainConfig(BaseModel):
    """One LoRA training job, in kohya's vocabulary. All paths may be relative to the config file."""

    # NaN and infinity are never a learning rate, an alpha or a weight
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    # [model]
    pretrained_model_name_or_path: str | None = None
    v2: bool = False
    v_parameterization: bool = False
    #: gpurun extension: force the base family instead of detecting it (sd15 | sd2 | sdxl)
    model_family: Literal["sd15", "sd2", "sdxl"] | None = None
    vae: str | None = None
    clip_skip: int | None = Field(default=None, ge=1, le=12)

    # [dataset]
    train_data_dir: str | None = None
    #: kohya's regularization images: <repeats>_<class>/ folders, balanced against the training images as kohya does
    reg_data_dir: str | None = None
    #: kohya's dataset config TOML ([general], [[datasets]], [[datasets.subsets]]); replaces train_data_dir
    dataset_config: str | None = None
    #: the loss weight of regularization images (kohya's default 1)
    prior_loss_weight: float = Field(default=1.0, ge=0)
    resolution: tuple[int, int] = (512, 512)
    batch_size: int = Field(default=1, ge=1, le=256)
    enable_bucket: bool = False
    min_bucket_reso: int = Field(default=256, ge=64, le=MAX_RESOLUTION)
    max_bucket_reso: int = Field(default=1024, ge=64, le=MAX_RESOLUTION)
    #: kohya ignores it without bucketing (the GUI writes 1 there); with bucketing it must be a multiple of 8
    bucket_reso_steps: int = Field(default=64, ge=1, le=MAX_RESOLUTION)
    bucket_no_upscale: bool = False
    #: gpurun's default is .txt (kohya's is .caption, which silently ignores .txt captions)
    caption_extension: str = ".txt"
    shuffle_caption: bool = False
    keep_tokens: int = Field(default=0, ge=0)
    flip_aug: bool = False
    caption_dropout_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    cache_latents: bool = True
    cache_latents_to_disk: bool = False
    #: None = cache them whenever the text encoder is not trained
    cache_text_encoder_outputs: bool | None = None

    # [training]
    output_dir: str = "./output"
    output_name: str = "lora"
    max_train_epochs: int | None = Field(default=None, ge=1)
    max_train_steps: int | None = Field(default=None, ge=1)
    learning_rate: float = Field(default=1e-4, ge=0)
    unet_lr: float | None = Field(default=None, ge=0)
    #: one rate for every text encoder, or one per encoder (the kohya_ss GUI writes a list)
    text_encoder_lr: float | list[float] | None = None
    lr_scheduler: str = "constant"
    #: steps, or (a float below 1) that fraction of the run's steps, as kohya reads it
    lr_warmup_steps: int | float = Field(default=0, ge=0)
    lr_scheduler_num_cycles: int = Field(default=1, ge=1)
    lr_scheduler_power: float = Field(default=1.0, gt=0)
    network_module: str = "networks.lora"
    network_dim: int = Field(default=4, ge=1, le=1024)
    network_alpha: float = Field(default=1.0, gt=0)
    network_train_unet_only: bool = False
    network_args: list[str] = Field(default_factory=list)
    #: a kohya LoRA file to start from (kohya's continued training); its rank and alpha must be the config's
    network_weights: str | None = None
    #: take network_dim, network_alpha and LoCon's conv_dim/conv_alpha from network_weights (kohya's meaning)
    dim_from_weights: bool = False
    optimizer_type: str = "AdamW"
    optimizer_args: list[str] = Field(default_factory=list)
    #: kohya's older spellings of optimizer_type = "Lion" / "AdamW8bit"
    use_lion_optimizer: bool = False
    use_8bit_adam: bool = False
    #: auto = bf16 where the GPU supports it, else fp16 on CUDA, fp32 on CPU
    mixed_precision: Literal["no", "fp16", "bf16", "auto"] = "auto"
    save_precision: Literal["fp16", "bf16", "float"] = "fp16"
    save_every_n_epochs: int | None = Field(default=None, ge=1)
    #: also a checkpoint and the state every N optimizer steps (kohya's <output_name>-step<N>); 0 = off
    save_every_n_steps: int | None = Field(default=None, ge=0)
    save_model_as: Literal["safetensors"] = "safetensors"
    gradient_checkpointing: bool = False
    gradient_accumulation_steps: int = Field(default=1, ge=1)
    max_grad_norm: float = Field(default=1.0, ge=0)
    seed: int | None = None
    noise_offset: float | None = Field(default=None, ge=0)
    noise_offset_random_strength: bool = False
    adaptive_noise_scale: float | None = None
    multires_noise_iterations: int | None = Field(default=None, ge=0, le=64)
    multires_noise_discount: float = Field(default=0.3, ge=0)
    ip_noise_gamma: float | None = Field(default=None, ge=0)
    ip_noise_gamma_random_strength: bool = False
    min_timestep: int | None = Field(default=None, ge=0, le=999)
    max_timestep: int | None = Field(default=None, ge=1, le=1000)
    min_snr_gamma: float | None = Field(default=None, ge=0)
    debiased_estimation_loss: bool = False
    loss_type: Literal["l2", "l1", "huber", "smooth_l1"] = "l2"
    huber_c: float = Field(default=0.1, gt=0, le=1)
    huber_schedule: Literal["constant", "exponential", "snr"] = "snr"
    huber_scale: float = Field(default=1.0, gt=0)
    #: written into the file's ss_training_comment
    training_comment: str | None = None
    #: ModelSpec metadata of the file (kohya's --metadata_*); the title defaults to output_name
    metadata_title: str | None = None
    metadata_author: str | None = None
    metadata_description: str | None = None
    metadata_license: str | None = None
    metadata_tags: str | None = None
    scale_weight_norms: float | None = Field(default=None, ge=0)
    network_dropout: float | None = Field(default=None, ge=0, lt=1)
    max_token_length: int | None = None
    #: True = continue from the state in output_dir; a path = continue from that state folder
    resume: bool | str = False

    # [sample]
    #: prompts for the sample grid: a list, or the path of a text file with one prompt per line
    sample_prompts: list[str] | str | None = None
    sample_every_n_epochs: int | None = Field(default=None, ge=1)
    sample_seeds: list[int] = Field(default_factory=lambda: [1, 2])
    sample_weights: list[float] = Field(default_factory=lambda: [0.0, 0.5, 0.7, 0.8, 1.0])
    sample_steps: int = Field(default=20, ge=1, le=150)
    sample_sampler: str = "euler_a"

    _ignored: dict[str, str] = PrivateAttr(default_factory=dict)
    _source: str | None = PrivateAttr(default=None)

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        # every string ends up in job.toml on the box, in file names or on a command line there
        texts = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] if isinstance(
            value, (list, tuple)
        ) else []  # fmt: skip
        for text in texts:
            if has_control_chars(text):
                raise ValueError(f"{text!r} holds control characters (a newline, a tab, an escape...)")
        return value

    @field_validator("output_name")
    @classmethod
    def _check_output_name(cls, value: str) -> str:
        # it names the LoRA files, on the box and in the run folder here: one plain file name
        problem = component_problem(value)
        if problem:
            raise ValueError(f"must be a plain file name, and {problem}")
        return value

    @field_validator("resolution", mode="before")
    @classmethod
    def _parse_resolution(cls, value: Any) -> Any:
        # kohya accepts 512, "512" and "512,768" (width,height)
        if isinstance(value, int):
            return (value, value)
        if isinstance(value, str):
            parts = [p.strip() for p in value.split(",")]
            try:
                nums = [int(p) for p in parts]
            except ValueError as exc:
                raise ValueError(f"expected 512 or '512,768', got {value!r}") from exc
            return (nums[0], nums[0]) if len(nums) == 1 else tuple(nums)
        return value

    @field_validator("resolution")
    @classmethod
    def _check_resolution(cls, value: tuple[int, int]) -> tuple[int, int]:
        if len(value) != 2 or any(v < 64 or v > MAX_RESOLUTION for v in value):
            raise ValueError(f"each side must be from 64 to {MAX_RESOLUTION}, got {'x'.join(map(str, value))}")
        return value

    @field_validator("text_encoder_lr", mode="before")
    @classmethod
    def _check_text_encoder_lr(cls, value: Any) -> Any:
        values = value if isinstance(value, list) else [value] if value is not None else []
        if isinstance(value, list) and not 1 <= len(value) <= 2:
            raise ValueError("give one rate, or one per text encoder (SDXL has two), e.g. [5e-5, 1e-5]")
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 for v in values):
            raise ValueError("every text-encoder learning rate must be a number >= 0")
        return value

    @field_validator("lr_warmup_steps")
    @classmethod
    def _check_warmup(cls, value: int | float) -> int | float:
        if isinstance(value, float) and value >= 1:
            raise ValueError(
                "a float is read as the fraction of the run's steps (kohya: 0.1 = 10%); "
                "write a whole number for a step count"
            )
        return value

    @field_validator("optimizer_type")
    @classmethod
    def _check_optimizer(cls, value: str) -> str:
        # kohya lower-cases the name before matching, so "adamw8bit" and "AdaFactor" are valid there too
        try:
            return optimizer(value).name
        except OptimizerArgsError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="before")
    @classmethod
    def _old_optimizer_switches(cls, data: Any) -> Any:
        # kohya's use_lion_optimizer / use_8bit_adam pick the optimizer, and kohya asserts optimizer_type is unset
        if not isinstance(data, dict):
            return data
        for switch, name in (("use_lion_optimizer", "Lion"), ("use_8bit_adam", "AdamW8bit")):
            if data.get(switch) is True:
                given = data.get("optimizer_type")
                if isinstance(given, str) and given.strip().lower() not in ("", name.lower()):
                    raise ValueError(f"{switch} picks {name}, and optimizer_type is {given!r}: keep one of them")
                data = {**data, "optimizer_type": name}
        if data.get("use_lion_optimizer") is True and data.get("use_8bit_adam") is True:
            raise ValueError("use_lion_optimizer and use_8bit_adam pick different optimizers: keep one of them")
        return data

    @field_validator("lr_scheduler")
    @classmethod
    def _check_scheduler(cls, value: str) -> str:
        if value not in SCHEDULERS:
            raise ValueError(f"unsupported scheduler {value!r}; choose one of {', '.join(SCHEDULERS)}")
        return value

    @field_validator("network_module")
    @classmethod
    def _check_module(cls, value: str) -> str:
        if value not in NETWORK_MODULES:
            raise ValueError(
                f"network_module {value!r} is not supported; use 'networks.lora' (kohya's LoRA, and its LoCon through "
                "conv_dim in network_args) or 'lycoris.kohya' (LyCORIS: algo=locon, loha, lokr, diag-oft)"
            )
        return value

    @field_validator("sample_sampler")
    @classmethod
    def _check_sampler(cls, value: str) -> str:
        if value.lower() not in SAMPLERS:
            raise ValueError(f"unknown sampler {value!r}; choose one of {', '.join(SAMPLERS)}")
        return value

    @field_validator("caption_extension")
    @classmethod
    def _check_caption_ext(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty (e.g. '.txt')")
        value = value if value.startswith(".") else f".{value}"
        if not _CAPTION_EXT.match(value):
            raise ValueError("must be a file extension such as '.txt': letters, digits, '_' or '-' after the dot")
        return value

    @field_validator("max_token_length")
    @classmethod
    def _check_token_length(cls, value: int | None) -> int | None:
        if value not in (None, 75):
            raise ValueError("only the standard 75-token prompt length is supported")
        return value

    @model_validator(mode="after")
    def _check_consistency(self) -> TrainConfig:
        if self.min_bucket_reso > self.max_bucket_reso:
            raise ValueError(
                f"min_bucket_reso ({self.min_bucket_reso}) is larger than max_bucket_reso ({self.max_bucket_reso})"
            )
        if self.enable_bucket:
            if self.bucket_reso_steps % 8:
                # kohya asserts a multiple of 64 (SD) / 32 (SDXL); 8 is the least a latent needs
                raise ValueError(
                    f"bucket_reso_steps ({self.bucket_reso_steps}) must be a multiple of 8 with enable_bucket "
                    "(kohya asks 64 for SD 1.x/2.x, 32 for SDXL)"
                )
            if self.bucket_reso_steps > self.min_bucket_reso:
                raise ValueError(
                    f"bucket_reso_steps ({self.bucket_reso_steps}) is larger than min_bucket_reso "
                    f"({self.min_bucket_reso}): no bucket would fit"
                )
        try:
            # which arguments are valid depends on the module: validated here, after both are read
            if self.network_module == "lycoris.kohya":
                parse_lycoris_args(self.network_args)
            else:
                parse_network_args(self.network_args)
        except NetworkArgsError as exc:
            raise ValueError(str(exc)) from None
        if self.lycoris is not None and self.network_dropout:
            raise ValueError(
                "network_dropout is not read by lycoris.kohya (kohya passes it, LyCORIS ignores it); write "
                '"dropout=<p>" in network_args for LyCORIS\' own dropout'
            )
        try:
            check_optimizer_args(self.optimizer_type, self.optimizer_args)
        except OptimizerArgsError as exc:
            raise ValueError(str(exc)) from None
        if optimizer(self.optimizer_type).adaptive:
            rates = self.adaptive_rates()
            if len(rates) > 1:
                # D-Adaptation and prodigyopt raise at their first step otherwise: catch it before renting
                raise ValueError(
                    f"optimizer_type {self.optimizer_type} needs one learning rate for the UNet and the text encoders "
                    f"(or 0 to freeze one), got {sorted(rates)}; {self.optimizer_type} scales it itself, so use the "
                    "same value (usually 1)"
                )
        if self.adaptive_noise_scale is not None and self.noise_offset is None:
            raise ValueError("adaptive_noise_scale requires noise_offset (as in kohya)")
        low, high = self.min_timestep or 0, 1000 if self.max_timestep is None else self.max_timestep
        if low > high:
            raise ValueError(f"min_timestep ({low}) is larger than max_timestep ({high})")
        if self.lr_scheduler == "adafactor" and not (
            self.optimizer_type == "Adafactor" and self.adafactor_relative_step
        ):
            raise ValueError(
                "lr_scheduler adafactor is Adafactor's own schedule: it needs optimizer_type Adafactor with "
                "relative_step (its default)"
            )
        return self

    # ---- derived values -------------------------------------------------------------------------------

    @property
    def epochs(self) -> int:
        """Epochs to train; kohya's default when neither epochs nor steps are given is 10 here."""
        return self.max_train_epochs or 10

    @property
    def effective_unet_lr(self) -> float:
        return self.learning_rate if self.unet_lr is None else self.unet_lr

    @property
    def effective_text_encoder_lr(self) -> float:
        """The first text encoder's rate; 0 when the text encoders are frozen (unet-only training or an lr of 0)."""
        return self.text_encoder_lrs(2)[0]

    def text_encoder_lrs(self, encoders: int) -> list[float]:
        """One learning rate per text encoder (0 = frozen). A single value, or a list of one, serves every
        encoder; a list of two gives SDXL's second encoder its own. Raises ConfigError for two different rates
        on a model with one text encoder."""
        if self.network_train_unet_only:
            return [0.0] * encoders
        given = self.text_encoder_lr
        rates = [self.learning_rate] if given is None else [float(v) for v in given] if isinstance(given, list) else [
            float(given)
        ]  # fmt: skip
        if len(rates) > encoders and len(set(rates)) > 1:
            raise ConfigError(
                f"text_encoder_lr gives {len(rates)} different rates {rates}, but this model has {encoders} "
                "text encoder",
                where=f"{self._source or 'config'}: text_encoder_lr",
                hint=f"write text_encoder_lr = {rates[0]}",
            )
        return (rates * encoders)[:encoders] if len(rates) == 1 else rates[:encoders]

    @property
    def trains_text_encoder(self) -> bool:
        return any(rate > 0 for rate in self.text_encoder_lrs(2))

    @property
    def network(self) -> NetworkArgs:
        """networks.lora's parsed network_args (validated on load); empty for LyCORIS (see `lycoris`)."""
        if self.network_module != "networks.lora":
            return NetworkArgs()
        return parse_network_args(self.network_args)

    @property
    def lycoris(self) -> LycorisArgs | None:
        """lycoris.kohya's parsed network_args, None for networks.lora."""
        if self.network_module != "lycoris.kohya":
            return None
        return parse_lycoris_args(self.network_args)

    def network_metadata(self) -> dict[str, str]:
        """ss_network_args: what shaped the trained network (kohya writes the network kwargs)."""
        lycoris = self.lycoris
        return lycoris.metadata() if lycoris is not None else self.network.metadata()

    def adaptive_rates(self) -> set[float]:
        """The distinct positive learning rates of the parameter groups (D-Adaptation and Prodigy need one)."""
        return {r for r in [self.effective_unet_lr, *self.text_encoder_lrs(2)] if r > 0}

    @property
    def adafactor_relative_step(self) -> bool:
        """Adafactor's relative_step: kohya's default is True (and warmup_init forces it), which makes Adafactor
        pick its own step size."""
        args = {k.strip(): v.strip().lower() for k, _, v in (raw.partition("=") for raw in self.optimizer_args)}
        return args.get("relative_step", "true") == "true" or args.get("warmup_init", "false") == "true"

    def warmup_steps(self, total_steps: int) -> int:
        """lr_warmup_steps in steps: kohya reads a float as that fraction of the run (int(0.1 * steps))."""
        if isinstance(self.lr_warmup_steps, float):
            return int(self.lr_warmup_steps * total_steps)
        return self.lr_warmup_steps

    def kohya_notes(self) -> dict[str, str]:
        """What `config check` says beyond the values: keys met without effect and implemented choices that differ
        from what kohya's own train_network.py would do with this file."""
        notes = dict(self._ignored)
        if isinstance(self.text_encoder_lr, list) and len(set(self.text_encoder_lr)) > 1:
            notes["text_encoder_lr"] = (
                f"{self.text_encoder_lr[0]:g} for the first text encoder and {self.text_encoder_lr[1]:g} for SDXL's "
                f"second (kohya's networks.lora would train both at {self.text_encoder_lr[0]:g})"
            )
        if self.optimizer_type == "Adafactor" and self.adafactor_relative_step:
            notes["optimizer_type"] = (
                "Adafactor with relative_step picks its own step size: learning_rate, unet_lr and text_encoder_lr "
                "are not used and the schedule is Adafactor's (as in kohya); set relative_step=False to use them"
            )
        if optimizer(self.optimizer_type).adaptive and any(r <= 0.1 for r in self.adaptive_rates()):
            # kohya warns the same: the lr is a multiplier of the step size these optimizers find themselves
            notes["optimizer_type"] = (
                f"{self.optimizer_type} adapts its own step size and multiplies it by the learning rate "
                f"({min(self.adaptive_rates()):g}); kohya warns below 0.1 and recommends 1.0"
            )
        width, height = self.resolution
        if not self.enable_bucket and (width % 8 or height % 8):
            # kohya crops to exactly this size too; the VAE's stride-8 latents then cover the multiple of 8 below
            notes["resolution"] = (
                f"{width}x{height} crops are encoded to {width // 8}x{height // 8} latents (as in kohya), which "
                f"cover {width - width % 8}x{height - height % 8}; samples render at that size"
            )
        if self.dataset_config:
            dataset = load_dataset_config(self.dataset_config)
            regs = sum(1 for subset in dataset.subsets if subset.get("is_reg"))
            notes["dataset_config"] = (
                f"{len(dataset.subsets)} subset(s){f', {regs} of them regularization' if regs else ''}; its "
                "resolution, batch size and bucket keys replace this file's, and each subset's own captions, "
                "repeats and flip_aug win over this file's (kohya's precedence: subset > dataset > [general] > here)"
            )
        if self.network_weights:
            weights = read_lora_weights(self.network_weights)
            conv = f", LoCon conv rank {weights.conv_dim}" if weights.conv_dim else ""
            fresh = "" if weights.has_text_encoder or not self.trains_text_encoder else (
                "; the text encoders have no weights there and start fresh (as in kohya)"
            )  # fmt: skip
            notes["network_weights"] = (
                f"training starts from {weights.path.name} (rank {weights.dim}, alpha {weights.alpha:g}{conv})"
                + (", its rank and alpha taken by dim_from_weights" if self.dim_from_weights else "")
                + fresh
            )
        lycoris = self.lycoris
        if lycoris is not None:
            from_gui = "; ".join(f"{k}: {why}" for k, why in lycoris.no_effect.items())
            notes["network_args"] = f"LyCORIS {lycoris.algo} (preset {lycoris.preset})" + (
                f"; without effect: {from_gui}" if from_gui else ""
            )
        if isinstance(self.lr_warmup_steps, float):
            notes["lr_warmup_steps"] = f"{self.lr_warmup_steps:g} of the run's steps, rounded down (as kohya)"
        return notes

    @property
    def ignored_keys(self) -> dict[str, str]:
        """kohya keys present in the source file that gpurun ignores, with the reason."""
        return dict(self._ignored)

    @property
    def source(self) -> str | None:
        return self._source

    # ---- loading and writing --------------------------------------------------------------------------

    @classmethod
    def from_mapping(
        cls, data: Mapping[str, Any], *, source: str = "config", base_dir: Path | None = None
    ) -> TrainConfig:
        """Validate a parsed TOML document (sectioned or flat). Raises ConfigError naming the key."""
        flat, ignored = _flatten(data, source)
        if flat.get("dataset_config"):
            fallback = dataset_fallback(flat)
            flat = {**flat, **dataset_settings(flat["dataset_config"], fallback, base_dir, source)}
            for key in ("train_data_dir", "reg_data_dir"):
                if flat.pop(key, None) is not None:
                    # kohya: "ignoring the following options because config file is found"
                    ignored[key] = "ignored: dataset_config names the images (as kohya does)"
        if flat.get("network_weights") and str(flat.get("network_module", "")).startswith("lycoris"):
            # the start file is read as kohya's LoRA (lora_down/lora_up); a LyCORIS one would need lycoris' loader
            raise ConfigError(
                "continuing from a file (network_weights) works with networks.lora, not lycoris.kohya yet",
                where=f"{source}: network_weights", hint="train the LyCORIS network from scratch",
            )  # fmt: skip
        if flat.get("network_weights"):
            flat = with_weights_settings(flat, base_dir, source)
        elif flat.get("dim_from_weights"):
            raise ConfigError("dim_from_weights needs network_weights (kohya's)", where=f"{source}: dim_from_weights")
        try:
            config = cls(**flat)
        except ValidationError as exc:
            raise _config_error(exc, source) from None
        if base_dir is not None:
            config = config.resolved_against(base_dir)
        config._ignored = ignored
        config._source = source
        return config

    @classmethod
    def from_toml(cls, path: str | Path) -> TrainConfig:
        """Load a kohya-style training_config.toml; relative paths are taken relative to the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError("config file not found", where=str(path), hint="check the path") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read config file: {exc}", where=str(path)) from None
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", where=str(path), hint="fix the TOML syntax") from None
        except RecursionError:
            raise ConfigError("not valid TOML: nested too deeply", where=str(path)) from None
        return cls.from_mapping(data, source=str(path), base_dir=path.resolve().parent)

    @classmethod
    def preset(cls, name: str) -> TrainConfig:
        """A built-in preset (sd15, sd2-v, sdxl) with the tutorial's values."""
        path = PRESETS_DIR / f"{name}.toml"
        if not path.is_file():
            known = sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))
            raise ConfigError(f"unknown preset {name!r}", hint=f"choose one of {', '.join(known)}")
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        return cls.from_mapping(data, source=f"preset {name}")

    def resolved_against(self, base_dir: Path) -> TrainConfig:
        """Copy with relative local paths made absolute against base_dir (hub ids are left alone)."""
        updates: dict[str, Any] = {}
        for key in ("train_data_dir", "reg_data_dir", "dataset_config", "network_weights", "output_dir"):
            value = getattr(self, key)
            if value and not Path(value).is_absolute():
                updates[key] = str((base_dir / value).resolve())
        model = self.pretrained_model_name_or_path
        if model and _looks_like_local_path(model) and not Path(model).is_absolute():
            updates["pretrained_model_name_or_path"] = str((base_dir / model).resolve())
        if isinstance(self.sample_prompts, str) and not Path(self.sample_prompts).is_absolute():
            updates["sample_prompts"] = str((base_dir / self.sample_prompts).resolve())
        copy = self.model_copy(update=updates)
        copy._ignored = dict(self._ignored)
        copy._source = self._source
        return copy

    def to_toml(self) -> str:
        """The config as a sectioned kohya-style TOML document (defaults included)."""
        sections: dict[str, list[str]] = {}
        for key, value in self.model_dump().items():
            if value is None:
                continue
            if key == "resolution":
                value = value[0] if value[0] == value[1] else f"{value[0]},{value[1]}"
            sections.setdefault(SECTION_OF.get(key, "training"), []).append(f"{key} = {_toml_value(value)}")
        return "\n".join(f"[{name}]\n" + "\n".join(lines) + "\n" for name, lines in sections.items())


def dataset_fallback(values: Mapping[str, Any]) -> dict[str, Any]:
    """The training config's values a dataset config falls back to (kohya's argparse values), by kohya's names."""
    defaults = {key: TrainConfig.model_fields[key].default for key in (*DATASET_KEYS, *SUBSET_KEYS)}
    return {key: values.get(key, default) for key, default in defaults.items()}


def _looks_like_local_path(value: str) -> bool:
    # hub ids are "owner/name" and URLs are URLs; local paths start with ./ ../ / ~ or name a file with an extension
    if value.startswith(("http://", "https://")):
        return False
    return value.startswith((".", "/", "~")) or value.endswith((".safetensors", ".ckpt", ".pt", ".bin"))


def _flatten(data: Mapping[str, Any], source: str) -> tuple[dict[str, Any], dict[str, str]]:
    """kohya flattens sections; so do we. Duplicates across sections and unknown keys are errors."""
    flat: dict[str, Any] = {}
    ignored: dict[str, str] = {}
    known = set(TrainConfig.model_fields)
    for outer_key, outer_value in data.items():
        items = outer_value.items() if isinstance(outer_value, dict) else [(outer_key, outer_value)]
        section = outer_key if isinstance(outer_value, dict) else None
        for key, value in items:
            where = f"{source}: [{section}].{key}" if section else f"{source}: {key}"
            name = ALIASES.get(key, key)
            if name not in known:
                note = kohya_keys.no_op_note(name, value)
                if note is not None:
                    ignored[key] = note
                    continue
                why = kohya_keys.refusal(name)
                if why is not None:
                    raise ConfigError(f"{key} = {_toml_value_or_repr(value)} is refused: {why}", where=where)
                raise ConfigError(f"unknown key {key!r}", where=where, hint=_suggest(key, known))
            if name in flat:
                raise ConfigError(f"key {key!r} is given twice", where=where, hint="keep one of them")
            flat[name] = value
    return flat, ignored


def _suggest(key: str, known: set[str]) -> str:
    candidates = known | set(kohya_keys.KEYS) | set(ALIASES)
    match = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
    if match:
        return f"did you mean {match[0]!r}?"
    return "see `gpurun config keys` for the accepted keys"


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    first = exc.errors()[0]
    message = first["msg"].removeprefix("Value error, ")
    loc = [str(p) for p in first["loc"]]
    if not loc:  # a check across keys: its message starts with the key it is about
        head = message.split(" ", 1)[0]
        loc = [head] if head in TrainConfig.model_fields else []
    key = ".".join(loc) or "config"
    section = SECTION_OF.get(loc[0] if loc else "")
    where = f"{source}: [{section}].{key}" if section else f"{source}: {key}"
    if "input" in first and first["type"] not in ("missing",) and first["loc"]:
        message = f"{message} (got {first['input']!r})"
    more = len(exc.errors()) - 1
    hint = f"{more} more problem(s) after this one" if more else None
    return ConfigError(message, where=where, hint=hint)


def _toml_value_or_repr(value: Any) -> str:
    try:
        return _toml_value(value)
    except TypeError:
        return repr(value)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # a TOML basic string: quotes, backslashes, controls escaped
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")
