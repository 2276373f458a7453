"""The socket types of Loom's diffusion nodes, with their colours in the editor."""

from engine.types import TYPES

MODEL = "MODEL"  # the denoising network (UNet) of a checkpoint: nodes.lib.bundles.ModelBundle
CLIP = "CLIP"  # tokenizers + text encoders: nodes.lib.bundles.ClipBundle
VAE = "VAE"  # the autoencoder: nodes.lib.bundles.VaeBundle
CONDITIONING = "CONDITIONING"  # nodes.lib.bundles.Conditioning
LATENT = "LATENT"  # torch tensor [B, C, h, w], scaled by the VAE's scaling factor
IMAGE = "IMAGE"  # torch float tensor [B, 3, H, W] in 0..1 on the CPU
MASK = "MASK"  # torch float tensor [B, 1, H, W], 1 = repaint
SCHEDULER = "SCHEDULER"  # a configured sampling schedule (scheduler + timesteps)
DENOISER = "DENOISER"  # a function: the model's one-step prediction
GUIDED_DENOISER = "GUIDED_DENOISER"  # a denoiser with the prompts and guidance applied: what a
# Sampler takes. Not a DENOISER: guidance nodes take a DENOISER, the Sampler only a guided one, so
# a wrong wire is refused when it is drawn
UPSCALE_MODEL = "UPSCALE_MODEL"  # an upscaler model (SD x4 / latent x2)
NOISE = "NOISE"  # nodes.lib.rng.Noise: unit noise [B, C, h, w] + the random stream after it
RNG = "RNG"  # nodes.lib.rng.RandomStream: a position in a seeded CPU random stream
CONTROL_NET = "CONTROL_NET"  # nodes.lib.controlnet.ControlNetBundle: a loaded ControlNet
LOSS = "LOSS"  # nodes.lib.guidance.Loss: a differentiable loss on images, for Loss Guidance
PRIOR = "PRIOR"  # nodes.lib.unclip.PriorBundle: an unCLIP prior (text -> CLIP image embedding)
CLIP_VISION = "CLIP_VISION"  # nodes.lib.unclip.ImageEncoderBundle: CLIP image processor+encoder
IMAGE_EMBEDS = "IMAGE_EMBEDS"  # torch float tensor [B, D]: CLIP image embeddings (unCLIP)
PRIOR_PROMPT = "PRIOR_PROMPT"  # nodes.lib.unclip.PriorPrompt: text encoded for a prior
MOVQ = "MOVQ"  # nodes.lib.unclip.MovqBundle: Kandinsky's MoVQ image autoencoder
UNCLIP_NOISE = "UNCLIP_NOISE"  # nodes.lib.unclip.NoiseAugBundle: Stable unCLIP's embedding
# normalizer + noising schedule
T5 = "T5"  # nodes.lib.deepfloyd.T5Bundle: DeepFloyd IF's T5 tokenizer + encoder
NOISY_MODEL = "NOISY_MODEL"  # nodes.lib.noisy_models.NoisyModelBundle: a noise-aware classifier
# or CLIP, for Classifier / CLIP Guidance

for name, color, parents in (
    (MODEL, "#b39ddb", ()),
    (CLIP, "#ffd54f", ()),
    (VAE, "#ef5350", ()),
    (CONDITIONING, "#ffa726", ()),
    (LATENT, "#f48fb1", ()),
    (IMAGE, "#64b5f6", ()),
    (MASK, "#81c784", ()),
    (SCHEDULER, "#4dd0e1", ()),
    (DENOISER, "#9575cd", ()),
    (GUIDED_DENOISER, "#7e57c2", ()),
    (UPSCALE_MODEL, "#a1887f", ()),
    (NOISE, "#f06292", ()),
    (RNG, "#90a4ae", ()),
    (CONTROL_NET, "#26a69a", ()),
    (LOSS, "#ff8a65", ()),
    (PRIOR, "#ce93d8", ()),
    (CLIP_VISION, "#ffe082", ()),
    (IMAGE_EMBEDS, "#ffb74d", ()),
    (PRIOR_PROMPT, "#ffcc80", ()),
    (MOVQ, "#e57373", ()),
    (UNCLIP_NOISE, "#bcaaa4", ()),
    (T5, "#fff176", ()),
    (NOISY_MODEL, "#4db6ac", ()),
):
    TYPES.register(name, color, parents)
