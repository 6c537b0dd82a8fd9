"""The loaded base model: its components, and how captions become UNet conditioning the way kohya does it.

LoadedModel is what load_base_model (gpurun.runner.model.load) returns; the trainer, exporter and sample grid use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from gpurun.errors import ConfigError
from gpurun.trainconfig import SAMPLERS

if TYPE_CHECKING:
    import torch

Family = Literal["sd15", "sd2", "sdxl"]
PredictionType = Literal["epsilon", "v_prediction"]
DEFAULT_RESOLUTION = {"sd15": 512, "sd2": 512, "sdxl": 1024}


@dataclass
class Conditioning:
    """What the UNet is conditioned on: per-token hidden states, and SDXL's pooled text embedding."""

    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None


@dataclass(eq=False)
class LoadedModel:
    family: Family
    prediction_type: PredictionType
    #: a sentence for the start event, e.g. "SDXL base (single-file checkpoint: conditioner.embedders.1 present)"
    detected: str
    unet: Any
    vae: Any
    text_encoders: list[Any]
    tokenizers: list[Any]
    #: DDPMScheduler with the model's betas and prediction type, for add_noise / get_velocity in training
    noise_scheduler: Any
    #: the path or hub id the model came from ("tiny-sd" for the built-in test model)
    source: str
    #: sha256 of a single-file checkpoint (ss_new_sd_model_hash), else None
    base_sha256: str | None = None
    #: A1111's legacy 8-hex checkpoint hash (ss_sd_model_hash), single files only
    base_model_hash: str | None = None
    #: short name for ss_sd_model_name: the file name, folder name or hub id
    base_name: str = ""
    #: the pipeline scheduler's config (betas, spacing, prediction type), used to build sampling schedulers
    scheduler_config: dict[str, Any] = field(default_factory=dict)
    #: the LyCORIS network applied to the UNet and text encoders (network_module = "lycoris.kohya"), else None;
    #: kohya's LoRA lives in the modules themselves (peft adapter "default")
    network: Any = None

    @property
    def v2(self) -> bool:
        return self.family == "sd2"

    @property
    def v_parameterization(self) -> bool:
        return self.prediction_type == "v_prediction"

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The base weights' dtype (UNet and text encoders)."""
        return next(self.unet.parameters()).dtype

    @property
    def vae_dtype(self) -> torch.dtype:
        return next(self.vae.parameters()).dtype

    @property
    def vae_scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def default_resolution(self) -> int:
        """The resolution the base was trained at (768 for SD 2.x v-prediction)."""
        if self.family == "sd2" and self.v_parameterization:
            return 768
        return DEFAULT_RESOLUTION[self.family]

    def enable_gradient_checkpointing(self, *, text_encoders: bool) -> None:
        """Trade compute for memory: on the UNet always, on the text encoders when they train."""
        self.unet.enable_gradient_checkpointing()
        if text_encoders:
            for encoder in self.text_encoders:
                encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    def tokenize(self, captions: list[str]) -> list[torch.Tensor]:
        """One [batch, 77] tensor of token ids per tokenizer (SDXL has two), padded and truncated like kohya."""
        return [
            tok(
                list(captions),
                padding="max_length",
                max_length=tok.model_max_length,
                truncation=True,
                return_tensors="pt",
            ).input_ids
            for tok in self.tokenizers
        ]

    def encode_prompt(self, input_ids: Sequence[torch.Tensor], clip_skip: int | None = None) -> Conditioning:
        """UNet conditioning from token ids, differentiable when the text encoders carry trainable LoRA weights.

        SD 1.x/2.x: the last hidden state, or with clip_skip=k the k-th from last passed through the final layer
        norm (kohya's rule). SDXL: TE1 and TE2 penultimate hidden states concatenated, plus TE2's projected pooled
        output; clip_skip does not apply (SDXL is trained on the penultimate layer already).
        """
        if len(input_ids) != len(self.text_encoders):
            raise ValueError(f"expected {len(self.text_encoders)} id tensors, got {len(input_ids)}")
        if self.family == "sdxl":
            states, pooled = [], None
            for index, (encoder, ids) in enumerate(zip(self.text_encoders, input_ids, strict=True)):
                out = encoder(ids.to(encoder.device), output_hidden_states=True)
                states.append(out.hidden_states[-2])
                if index == 1:
                    pooled = out.text_embeds
            import torch

            return Conditioning(torch.cat(states, dim=-1), pooled)
        encoder = self.text_encoders[0]
        ids = input_ids[0].to(encoder.device)
        if clip_skip is None or clip_skip <= 1:
            return Conditioning(encoder(ids).last_hidden_state)
        hidden = encoder(ids, output_hidden_states=True).hidden_states[-clip_skip]
        return Conditioning(_text_model(encoder).final_layer_norm(hidden))

    def unet_added_cond(
        self,
        cond: Conditioning,
        original_sizes: Sequence[Sequence[int]],
        crop_top_lefts: Sequence[Sequence[int]],
        target_sizes: Sequence[Sequence[int]],
    ) -> dict[str, torch.Tensor] | None:
        """SDXL's added_cond_kwargs: pooled text embeds and time ids (original h,w + crop top,left + target h,w)
        per sample. None for SD 1.x/2.x."""
        if self.family != "sdxl":
            return None
        import torch

        assert cond.pooled is not None, "SDXL conditioning carries a pooled embedding"
        rows = [
            [*map(int, o), *map(int, c), *map(int, t)]
            for o, c, t in zip(original_sizes, crop_top_lefts, target_sizes, strict=True)
        ]
        if len(rows) != cond.pooled.shape[0]:
            raise ValueError(f"got size info for {len(rows)} samples, the batch has {cond.pooled.shape[0]}")
        time_ids = torch.tensor(rows, device=cond.pooled.device, dtype=cond.pooled.dtype)
        return {"text_embeds": cond.pooled, "time_ids": time_ids}

    def pipeline(self, sampler: str = "euler_a"):  # -> StableDiffusionPipeline | StableDiffusionXLPipeline
        """A diffusers pipeline sharing these components (no copies), with a sampling scheduler by kohya name."""
        import diffusers

        name = SAMPLERS.get(sampler.lower())
        if name is None:
            raise ConfigError(
                f"unknown sampler {sampler!r}", where="sample_sampler", hint=f"choose one of {', '.join(SAMPLERS)}"
            )
        config = {**self.scheduler_config, "prediction_type": self.prediction_type}
        scheduler = getattr(diffusers, name).from_config(config)
        return assemble_pipeline(self.family, self.unet, self.vae, self.text_encoders, self.tokenizers, scheduler)


def _text_model(encoder: Any) -> Any:
    # transformers 5 flattened CLIPTextModel (no .text_model); CLIPTextModelWithProjection keeps it
    return getattr(encoder, "text_model", encoder)


def assemble_pipeline(family: str, unet: Any, vae: Any, text_encoders: list, tokenizers: list, scheduler: Any):
    """A StableDiffusion(XL)Pipeline from components, without a safety checker."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if family == "sdxl":
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoders[0],
            text_encoder_2=text_encoders[1],
            tokenizer=tokenizers[0],
            tokenizer_2=tokenizers[1],
            unet=unet,
            scheduler=scheduler,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoders[0],
        tokenizer=tokenizers[0],
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
