"""Tensors the training step would otherwise rebuild or re-upload every step, made once on the training device:
min-SNR's per-timestep table, SDXL's time ids per image, and tokenized captions (when the text encoder trains).

Each gives exactly the values of the per-step code it replaces (gpurun.runner.loss.snr_weights,
LoadedModel.unet_added_cond, LoadedModel.tokenize); only where and how often they are made changes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from gpurun.runner.data import TrainData
    from gpurun.runner.model.loaded import Conditioning, LoadedModel

#: distinct captions kept tokenized; shuffled captions make many, and a token row is 77 ints per tokenizer
TOKEN_CACHE_SIZE = 8192


@dataclass
class StepCache:
    snr: dict[Any, torch.Tensor] = field(default_factory=dict)
    time_ids: dict[tuple[int, Any, Any], torch.Tensor] = field(default_factory=dict)
    tokens: dict[str, list[torch.Tensor]] = field(default_factory=dict)

    def snr_weights(self, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float, v_pred: bool) -> Any:
        """Min-SNR-γ weights from a per-timestep SNR table made once on the timesteps' device."""
        import torch

        table = self.snr.get(timesteps.device)
        if table is None:
            alpha = alphas_cumprod.to(timesteps.device).float()
            table = self.snr[timesteps.device] = alpha / (1.0 - alpha)
        snr = table[timesteps]
        clipped = torch.minimum(snr, torch.full_like(snr, gamma))
        return clipped / (snr + 1.0) if v_pred else clipped / snr

    def added_cond(
        self, model: LoadedModel, data: TrainData, indices: Sequence[int], cond: Conditioning
    ) -> dict[str, torch.Tensor] | None:
        """SDXL's added_cond_kwargs with each image's time ids made once (None for SD 1.x/2.x)."""
        if model.family != "sdxl":
            return None
        import torch

        assert cond.pooled is not None, "SDXL conditioning carries a pooled embedding"
        rows = []
        for index in indices:
            key = (index, cond.pooled.device, cond.pooled.dtype)
            row = self.time_ids.get(key)
            if row is None:
                image = data.images[index]
                values = [*image.original_size_hw, *image.crop_top_left, *image.target_size_hw]
                row = torch.tensor([[int(v) for v in values]], device=cond.pooled.device, dtype=cond.pooled.dtype)
                self.time_ids[key] = row
            rows.append(row)
        if len(rows) != cond.pooled.shape[0]:
            raise ValueError(f"got size info for {len(rows)} samples, the batch has {cond.pooled.shape[0]}")
        return {"text_embeds": cond.pooled, "time_ids": torch.cat(rows)}

    def tokenize(self, model: LoadedModel, captions: Sequence[str]) -> list[torch.Tensor]:
        """Token ids per text encoder for a batch of captions, each caption tokenized once and kept on the device
        of the encoder it feeds."""
        import torch

        missing = [c for c in dict.fromkeys(captions) if c not in self.tokens]
        if missing and len(self.tokens) + len(missing) > TOKEN_CACHE_SIZE:
            self.tokens.clear()
            missing = list(dict.fromkeys(captions))
        if missing:
            fresh = model.tokenize(missing)
            for row, caption in enumerate(missing):
                self.tokens[caption] = [
                    ids[row : row + 1].to(encoder.device)
                    for ids, encoder in zip(fresh, model.text_encoders, strict=True)
                ]
        per_caption = [self.tokens[c] for c in captions]
        return [torch.cat([ids[i] for ids in per_caption]) for i in range(len(model.text_encoders))]
