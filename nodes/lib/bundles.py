"""The values that travel on MODEL, CLIP, VAE and CONDITIONING edges.

Plain containers; the loader fills them, the other nodes read them. `family` is one of:
"sd1", "sd2", "sdxl", "sdxl_refiner", "sd_inpaint", "sd2_inpaint", "sd_x4_upscaler",
"sd_latent_upscaler", "loom_builtin" (Loom's own small model behaves like "sd1"), "pixel" (a
pixel-space UNet2DModel: nodes.lib.pixel).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodes.lib.model_manager import resolve


@dataclass(eq=False)
class ModelBundle:
    unet_ref: Any
    """A ModelHandle (the model manager owns the weights; `unet` borrows them) or, when built by
    hand, the diffusers UNet2DConditionModel itself."""
    family: str
    prediction_type: str  # "epsilon" | "v_prediction" | "sample"
    scheduler_config: dict[str, Any]  # the checkpoint's own diffusers scheduler config
    dtype: Any
    device: Any
    source: str  # identity of the file/folder it came from (for display and keys)
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. low_res_scheduler for x4

    @property
    def unet(self) -> Any:
        """The UNet's weights, for as long as the caller holds them (reloaded if evicted)."""
        return resolve(self.unet_ref)

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.unet.parameters())

    def __loom_cache_size__(self) -> int:
        return 0  # the model manager owns this memory, not the result cache


@dataclass(eq=False)
class ClipBundle:
    tokenizers_ref: Any  # CLIPTokenizers, one per text encoder (a list, or a ModelHandle)
    text_encoders_ref: Any  # CLIPTextModel(s) (SDXL: two): a list, or a ModelHandle
    family: str
    dtype: Any
    device: Any
    source: str
    force_zeros_for_empty_prompt: bool = False
    """SDXL base (diffusers' pipeline flag): an empty negative prompt is all-zero embeddings."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tokenizers(self) -> list[Any]:
        return list(resolve(self.tokenizers_ref))

    @property
    def text_encoders(self) -> list[Any]:
        return list(resolve(self.text_encoders_ref))

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for m in self.text_encoders for p in m.parameters())

    def __loom_cache_size__(self) -> int:
        return 0  # the model manager owns this memory, not the result cache


@dataclass(eq=False)
class VaeBundle:
    vae_ref: Any  # diffusers AutoencoderKL, or a ModelHandle to it
    family: str
    scaling_factor: float
    dtype: Any
    device: Any
    source: str
    force_upcast: bool = False  # decode in fp32 (SDXL's VAE overflows in fp16)
    shift_factor: float | None = None

    @property
    def vae(self) -> Any:
        return resolve(self.vae_ref)

    @property
    def nbytes(self) -> int:
        return sum(p.numel() * p.element_size() for p in self.vae.parameters())

    def __loom_cache_size__(self) -> int:
        return 0  # the model manager owns this memory, not the result cache


@dataclass(eq=False)
class Conditioning:
    """Text conditioning for a batch of one prompt (the sampler repeats it per image), or a
    class label for a class-conditional model (`embeds` None), or nothing at all for an
    unconditional one (both None)."""

    embeds: Any  # torch tensor [1, n_tokens, dim] (n_tokens = 77 * chunks); None: no text
    pooled: Any = None  # SDXL: pooled text embedding [1, 1280]
    family: str = "sd1"
    extra: dict[str, Any] = field(default_factory=dict)
    """SDXL micro-conditioning: original_size, crops_coords_top_left, target_size (tuples);
    refiner: aesthetic_score. The UNet Step builds `add_time_ids` from these."""
    class_labels: Any = None
    """The UNet's `class_labels` for this conditioning, repeated per image by the UNet Step: a
    class-conditional UNet2DModel's label (long tensor [1], Class Label node; CFG Combine
    guides it against the null class's), or Stable unCLIP's noised image embedding."""

    @property
    def nbytes(self) -> int:
        total = 0 if self.embeds is None else self.embeds.numel() * self.embeds.element_size()
        if self.pooled is not None:
            total += self.pooled.numel() * self.pooled.element_size()
        return total
