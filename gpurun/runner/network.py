"""Which network a run trains, and the operations that differ between them: kohya's LoRA and LoCon (networks.lora,
injected with peft) or LyCORIS (lycoris.kohya, the lycoris-lora package). The loop, exporter and state use these."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gpurun.runner.lora import LoraParams, add_lora, load_lora_state, lora_state
from gpurun.runner.lycoris_net import add_lycoris, load_lycoris_state, lycoris_state
from gpurun.runner.maxnorm import adapted_layers, add_rank_dropout, apply_max_norm

if TYPE_CHECKING:
    import torch

    from gpurun.runner.model.loaded import LoadedModel
    from gpurun.trainconfig import TrainConfig


def add_network(model: LoadedModel, config: TrainConfig, *, seed: int | None) -> LoraParams:
    """Apply the configured network to the model, with kohya's network_dropout where networks.lora has it."""
    lycoris = config.lycoris
    if lycoris is not None:
        return add_lycoris(
            model,
            lycoris,
            rank=config.network_dim,
            alpha=config.network_alpha,
            train_text_encoder=config.trains_text_encoder,
            seed=seed,
        )
    network = config.network
    lora = add_lora(
        model,
        rank=config.network_dim,
        alpha=config.network_alpha,
        train_text_encoder=config.trains_text_encoder,
        seed=seed,
        conv_dim=network.conv_dim if network.is_locon else None,
        conv_alpha=network.conv_alpha or 1.0,
    )
    if config.network_dropout:
        add_rank_dropout(adapted_layers([model.unet, *model.text_encoders]), config.network_dropout)
    return lora


def max_norm_step(model: LoadedModel, layers: list[Any], limit: float) -> None:
    """kohya's scale_weight_norms after an optimizer step: LyCORIS' own apply_max_norm_regularization (what kohya
    calls on a lycoris network), or gpurun's for the peft LoRA layers."""
    if model.network is not None:
        model.network.apply_max_norm_regularization(limit, model.device)
    else:
        apply_max_norm(layers, limit)


def network_state(model: LoadedModel) -> dict[str, torch.Tensor]:
    """The trained weights for a resumable state."""
    return lycoris_state(model) if model.network is not None else lora_state(model)


def load_network_state(model: LoadedModel, state: dict[str, torch.Tensor]) -> None:
    if model.network is not None:
        load_lycoris_state(model, state)
    else:
        load_lora_state(model, state)
