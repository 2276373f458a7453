"""GLIDE's noised CLIP at toy scale: an image tower that reads a diffusion model's *noisy*
samples and a text tower that reads the prompt, both mapped into one embedding space, trained
contrastively (CLIP's loss) so that f(x_t, σ)·g(caption) is high when x_t is a noised picture
of the caption. CLIP Guidance (nodes.guidance) adds its gradient to the prediction (GLIDE:
μ̂ = μ(x_t|c) + s·Σ·∇_{x_t}(f(x_t)·g(c))).

The image tower is nodes.lib.noisy_models' NoiseLevelEncoder (told log σ, not a timestep), so
the folder format, loader and space checks are the classifier's (`register_kind`).

The image tower also gets two coordinate channels (with_coordinates): the captions say where
the shape is, and a pooled convolutional tower otherwise sees position only through padding.

The text tower reads the diffusion model's own text encoding, the CONDITIONING a Text Encoder
node makes ([1, 77·chunks, width] hidden states), not the tokens: GLIDE's CLIP has a text
transformer of its own, but here the diffusion model's encoder already reads the prompt, its
49k-token embedding table would be most of the folder's size, and the user has the encoding
on the canvas anyway. The head pools the tokens with a learned query (attention pooling: which
tokens matter is learned, and a long prompt's chunks are read as one sequence) and maps the
result through a small MLP to the embedding. The folder records the width it reads
(`text_hidden_size`) and the model whose encoder it was trained with (`trained_with`): the
encoding of another model's encoder of the same width is accepted but means something else.

Score. CLIP's logit: exp(logit_scale)·cos(f(x_t), g(c)), with the temperature learned in
training (as CLIP and GLIDE's `cond_fn` do). The logit, not the bare cosine: it is the log of
the softmax's unnormalised probability, so ∇ score behaves like a classifier's ∇ log p and
the guidance scale means roughly what Classifier Guidance's does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from nodes.lib.noisy_models import EncoderConfig, NoiseLevelEncoder, register_kind
from nodes.lib.vram import placement

KIND = "noisy_clip"
GUIDE_MAX_LOG_SIGMA = 4.0
"""Above this noise level the CLIP gives no gradient (ClipScore): at log σ > 4 (SNR below
3·10⁻⁴) a 4×8×8 latent holds a signal of total energy 256·ᾱ < 0.1 of one noise value's
variance, so no caption can be read there and any gradient is the network's noise, while
the guided x̂0 moves by (1−ᾱ)/√ᾱ times the gradient: 55× at log σ = 4, 4096× at a
zero-terminal-SNR schedule's last step (ᾱ clamped to 2⁻²⁴). Measured with loom-clip on
noised latents of drawn scenes: the x̂0 shift per unit scale is 0.25-0.8 (rms, latent units)
from t = 500 to 960 (log σ 4.0), 2.5 at log σ 5.5 and 66 at the last step; guided there, a
half-trained loom-clip at scale 2 turned every image into coloured noise."""


class TextHead(nn.Module):
    """Attention pooling over the text encoder's hidden states ([B, n, width]) by `heads`
    learned queries' worth of multi-head attention, then LayerNorm → Linear → GELU → Linear to
    the embedding."""

    def __init__(self, width: int, embed_dim: int, hidden: int = 256, heads: int = 4):
        super().__init__()
        self.query = nn.Parameter(torch.randn(1, 1, width) * width ** -0.5)
        self.norm_in = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, hidden), nn.GELU(),
                                 nn.Linear(hidden, embed_dim))

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = self.norm_in(hidden)
        pooled, _ = self.attn(self.query.expand(h.shape[0], -1, -1), h, h,
                              need_weights=False)
        return self.mlp(pooled[:, 0])


class NoisyClip(nn.Module):
    """Image tower (NoiseLevelEncoder, out_dim = the embedding) and text tower (TextHead over
    the text encoder's hidden states), with CLIP's learned temperature."""

    kind = KIND

    def __init__(self, encoder: EncoderConfig, text_hidden_size: int, text_head_hidden: int = 256,
                 text_heads: int = 4, coords: bool = True,
                 guide_max_log_sigma: float = GUIDE_MAX_LOG_SIGMA):
        super().__init__()
        self.guide_max_log_sigma = float(guide_max_log_sigma)
        self.text_hidden_size = int(text_hidden_size)
        self.text_head_hidden = int(text_head_hidden)
        self.text_heads = int(text_heads)
        self.coords = bool(coords)
        self.encoder = NoiseLevelEncoder(encoder)
        self.text = TextHead(self.text_hidden_size, encoder.out_dim, self.text_head_hidden,
                             self.text_heads)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    @property
    def embed_dim(self) -> int:
        return int(self.encoder.config.out_dim)

    def encode_image(self, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings [B, D] of noisy samples at noise levels log σ [B]."""
        if self.coords:
            x = with_coordinates(x)
        expected = self.encoder.config.in_channels
        if x.shape[1] != expected:
            raise ValueError(f"this CLIP reads {expected - 2 * self.coords}-channel samples, "
                             f"got {x.shape[1] - 2 * self.coords}")
        return nn.functional.normalize(self.encoder(x, log_sigma), dim=-1)

    def encode_text(self, hidden: torch.Tensor) -> torch.Tensor:
        """Unit-length embeddings [B, D] of text encodings [B, n, width]."""
        if hidden.shape[-1] != self.text_hidden_size:
            raise ValueError(f"this CLIP reads text encodings of width {self.text_hidden_size}, "
                             f"got {hidden.shape[-1]}")
        return nn.functional.normalize(self.text(hidden), dim=-1)

    def scale(self) -> torch.Tensor:
        """exp(logit_scale), capped at 100 as CLIP does."""
        return self.logit_scale.exp().clamp(max=100.0)

    def logits(self, x: torch.Tensor, log_sigma: torch.Tensor,
               hidden: torch.Tensor) -> torch.Tensor:
        """[B_images, B_texts] CLIP logits: scaled cosine similarities."""
        return self.scale() * self.encode_image(x, log_sigma) @ self.encode_text(hidden).T

    def extra_config(self) -> dict[str, Any]:
        return {"text_hidden_size": self.text_hidden_size,
                "text_head_hidden": self.text_head_hidden, "text_heads": self.text_heads,
                "coords": self.coords, "embed_dim": self.embed_dim,
                "guide_max_log_sigma": self.guide_max_log_sigma}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NoisyClip:
        return cls(EncoderConfig.from_dict(config["encoder"]), int(config["text_hidden_size"]),
                   int(config.get("text_head_hidden", 256)), int(config.get("text_heads", 4)),
                   bool(config.get("coords", True)),
                   float(config.get("guide_max_log_sigma", GUIDE_MAX_LOG_SIGMA)))


def with_coordinates(x: torch.Tensor) -> torch.Tensor:
    """x [B, C, H, W] with two more channels, the row and column coordinates in [-1, 1]
    (CoordConv, Liu et al. 2018). The captions name where the shape is, and a convolutional
    tower that ends in global average pooling sees position only through its zero padding;
    the coordinate channels hand it over directly, for 2 input channels' worth of weights."""
    b, _, h, w = x.shape
    ys = torch.linspace(-1.0, 1.0, h, device=x.device, dtype=x.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=x.device, dtype=x.dtype)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij")).unsqueeze(0).expand(b, -1, -1, -1)
    return torch.cat([x, grid], dim=1)


register_kind(KIND, NoisyClip.from_config)


def clip_loss(logits: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over a batch whose i-th image and i-th text match."""
    target = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (nn.functional.cross_entropy(logits, target)
                  + nn.functional.cross_entropy(logits.T, target))


def text_hidden_size(config: dict[str, Any]) -> int:
    """The text-encoding width a noisy CLIP folder's config says it reads."""
    return int(config["text_hidden_size"])


@dataclass(eq=False)
class ClipScore:
    """GLIDE's CLIP guidance score: exp(logit_scale)·cos(f(x_t, σ), g(prompt)) per row, from a
    noise-aware CLIP (NoisyModelBundle) and the prompt's text encoding (Conditioning.embeds,
    [1, n, width]). The text embedding is computed without a gradient (only x_t is guided).
    Rows noisier than the folder's `guide_max_log_sigma` keep their score but give no
    gradient (GUIDE_MAX_LOG_SIGMA says why)."""

    clip: Any
    embeds: Any

    def __call__(self, x: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
        net = self.clip.module()
        param = placement(net)
        with torch.no_grad():
            text = net.encode_text(self.embeds.to(param.device, param.dtype))
        log_sigma = log_sigma.to(param.device)
        image = net.encode_image(x.to(param.device, param.dtype), log_sigma)
        score = (net.scale() * (image * text).sum(-1)).float()
        blind = log_sigma > float(self.clip.config.get("guide_max_log_sigma",
                                                       GUIDE_MAX_LOG_SIGMA))
        if bool(blind.any()):
            score = torch.where(blind, score.detach(), score)
        return score.to(x.device)
