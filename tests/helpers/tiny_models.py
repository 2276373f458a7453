"""Tiny random-weight diffusion models, built from configs (never from a hub) and saved as
diffusers folders. Shared by the loader, conditioning and sampling tests.

The tokenizers are the real CLIP tokenizer files from `resources/tokenizers/clip` (vocab 49408),
so tokenization is real; every network is small enough to run in milliseconds on a CPU.
Folders are written with the pipeline class diffusers would use for that family, so
`DiffusionPipeline.from_pretrained(folder)` gives the numerical reference.

Stable signatures (other tests depend on them):
    make_sd_folder(path, family="sd1", prediction_type="epsilon", in_channels=4, seed=0) -> Path
    make_sdxl_folder(path, refiner=False, seed=0, force_zeros_for_empty_prompt=True) -> Path
    make_x4_upscaler_folder(path, seed=0) -> Path
    make_latent_upscaler_folder(path, seed=0) -> Path
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / "resources" / "tokenizers" / "clip"

TEXT_HIDDEN = 32
UNET_CHANNELS = (32, 64)
SAMPLE_SIZE = 32  # latent size of the tiny UNets (images of 256 px with the tiny VAE)

# The tiny VAE keeps the real 8x down-sampling (4 blocks), so image sizes behave as in SD.
VAE_CHANNELS = (16, 16, 32, 32)


# ---- components -------------------------------------------------------------------------------


def tiny_tokenizer(pad_token: str = "<|endoftext|>"):
    """The real CLIP tokenizer; SD2 / SDXL's second tokenizer pad with "!" (id 0)."""
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    if pad_token != tok.pad_token:
        tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token=pad_token)
    return tok


def tiny_text_encoder(hidden: int = TEXT_HIDDEN, projection_dim: int | None = None,
                      hidden_act: str = "quick_gelu", layers: int = 3, seed: int = 0):
    """A CLIP text encoder with the real vocabulary; `projection_dim` gives SDXL's second
    encoder (CLIPTextModelWithProjection)."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=hidden, intermediate_size=2 * hidden,
        num_attention_heads=4, num_hidden_layers=layers, max_position_embeddings=77,
        projection_dim=projection_dim or hidden, hidden_act=hidden_act,
        bos_token_id=0, eos_token_id=2, pad_token_id=1)  # as SD's published configs
    model = CLIPTextModelWithProjection(cfg) if projection_dim else CLIPTextModel(cfg)
    return model.eval()


def tiny_vae(blocks: int = 4, scaling_factor: float = 0.18215, seed: int = 0,
             force_upcast: bool = True):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=VAE_CHANNELS[:blocks], layers_per_block=1, norm_num_groups=8,
        sample_size=SAMPLE_SIZE * 2 ** (blocks - 1), scaling_factor=scaling_factor,
        force_upcast=force_upcast).eval()


def tiny_unet(family: str = "sd1", in_channels: int = 4, seed: int = 0, **overrides):
    """A UNet2DConditionModel shaped like `family`'s (sd1, sd2, sdxl, sdxl_refiner, x4)."""
    from diffusers import UNet2DConditionModel

    args = dict(
        block_out_channels=UNET_CHANNELS, layers_per_block=2, sample_size=SAMPLE_SIZE,
        in_channels=in_channels, out_channels=4, norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_HIDDEN, attention_head_dim=8)
    if family in ("sd2", "x4"):
        args.update(attention_head_dim=(2, 4), use_linear_projection=True)
    if family == "x4":
        args.update(num_class_embeds=1000, class_embed_type=None)
    if family in ("sdxl", "sdxl_refiner"):
        refiner = family == "sdxl_refiner"
        args.update(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True,
            transformer_layers_per_block=(1, 2),
            cross_attention_dim=TEXT_HIDDEN if refiner else 2 * TEXT_HIDDEN,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=8 * (5 if refiner else 6) + TEXT_HIDDEN)
    args.update(overrides)
    torch.manual_seed(seed)
    return UNet2DConditionModel(**args).eval()


def sd1_scheduler(prediction_type: str = "epsilon"):
    """runwayml/stable-diffusion-v1-5's PNDM scheduler config."""
    from diffusers import PNDMScheduler

    return PNDMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, set_alpha_to_one=False, skip_prk_steps=True, steps_offset=1,
        prediction_type=prediction_type, trained_betas=None)


def sd2_scheduler(prediction_type: str = "v_prediction"):
    """stabilityai/stable-diffusion-2-1's DDIM scheduler config."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
        num_train_timesteps=1000, set_alpha_to_one=False, steps_offset=1,
        prediction_type=prediction_type)


def sdxl_scheduler():
    """stabilityai/stable-diffusion-xl-base-1.0's Euler scheduler config."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        num_train_timesteps=1000, steps_offset=1, timestep_spacing="leading",
        interpolation_type="linear", prediction_type="epsilon", use_karras_sigmas=False)


# ---- pipelines / folders ----------------------------------------------------------------------


def make_sd_pipeline(family: str = "sd1", prediction_type: str = "epsilon",
                     in_channels: int = 4, seed: int = 0):
    """A tiny StableDiffusion(Inpaint)Pipeline: family "sd1" or "sd2" (OpenCLIP-like text
    encoder with gelu, tokenizer padding with "!", linear projections); in_channels=9 gives
    the inpainting UNet and pipeline."""
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    if family not in ("sd1", "sd2"):
        raise ValueError(f"make_sd_pipeline: family must be 'sd1' or 'sd2', got {family!r}")
    sd2 = family == "sd2"
    cls = StableDiffusionInpaintPipeline if in_channels == 9 else StableDiffusionPipeline
    scheduler = sd2_scheduler(prediction_type) if sd2 else sd1_scheduler(prediction_type)
    return cls(
        vae=tiny_vae(seed=seed, force_upcast=True),
        text_encoder=tiny_text_encoder(hidden_act="gelu" if sd2 else "quick_gelu", seed=seed),
        tokenizer=tiny_tokenizer("!" if sd2 else "<|endoftext|>"),
        unet=tiny_unet(family, in_channels=in_channels, seed=seed),
        scheduler=scheduler, safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)


def make_sd_folder(path, family: str = "sd1", prediction_type: str = "epsilon",
                   in_channels: int = 4, seed: int = 0) -> Path:
    """Save a tiny SD 1.x / 2.x (inpainting with in_channels=9) pipeline as a diffusers folder."""
    path = Path(path)
    make_sd_pipeline(family, prediction_type, in_channels, seed).save_pretrained(path)
    return path


def make_sdxl_pipeline(refiner: bool = False, seed: int = 0,
                       force_zeros_for_empty_prompt: bool | None = None):
    """A tiny StableDiffusionXL(Img2Img)Pipeline. The base has two text encoders (CLIP-L-like,
    and a bigG-like one with projection, padding with "!"); the refiner only the second.
    force_zeros_for_empty_prompt defaults as the published configs: base True, refiner False."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    if force_zeros_for_empty_prompt is None:
        force_zeros_for_empty_prompt = not refiner
    te2 = tiny_text_encoder(projection_dim=TEXT_HIDDEN, hidden_act="gelu", seed=seed + 1)
    unet = tiny_unet("sdxl_refiner" if refiner else "sdxl", seed=seed)
    vae = tiny_vae(seed=seed, scaling_factor=0.13025, force_upcast=True)
    if refiner:
        return StableDiffusionXLImg2ImgPipeline(
            vae=vae, text_encoder=None, text_encoder_2=te2, tokenizer=None,
            tokenizer_2=tiny_tokenizer("!"), unet=unet, scheduler=sdxl_scheduler(),
            requires_aesthetics_score=True,
            force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=tiny_text_encoder(seed=seed), text_encoder_2=te2,
        tokenizer=tiny_tokenizer(), tokenizer_2=tiny_tokenizer("!"), unet=unet,
        scheduler=sdxl_scheduler(), force_zeros_for_empty_prompt=force_zeros_for_empty_prompt)


def make_sdxl_folder(path, refiner: bool = False, seed: int = 0,
                     force_zeros_for_empty_prompt: bool | None = None) -> Path:
    """Save a tiny SDXL base (or refiner) pipeline as a diffusers folder."""
    path = Path(path)
    make_sdxl_pipeline(refiner, seed, force_zeros_for_empty_prompt).save_pretrained(path)
    return path


def make_x4_upscaler_pipeline(seed: int = 0):
    """A tiny StableDiffusionUpscalePipeline (7-channel UNet with noise-level class embedding,
    3-block VAE with scaling 0.08333, v-prediction DDIM + DDPM low-res scheduler)."""
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    low_res = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
                            num_train_timesteps=1000, clip_sample=False)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                          steps_offset=1, prediction_type="v_prediction")
    return StableDiffusionUpscalePipeline(
        vae=tiny_vae(blocks=3, scaling_factor=0.08333, seed=seed, force_upcast=False),
        text_encoder=tiny_text_encoder(hidden_act="gelu", seed=seed),
        tokenizer=tiny_tokenizer("!"), unet=tiny_unet("x4", in_channels=7, seed=seed),
        low_res_scheduler=low_res, scheduler=sched, max_noise_level=350)


def make_x4_upscaler_folder(path, seed: int = 0) -> Path:
    path = Path(path)
    make_x4_upscaler_pipeline(seed).save_pretrained(path)
    return path


def make_latent_upscaler_pipeline(seed: int = 0):
    """A tiny StableDiffusionLatentUpscalePipeline (K-diffusion style UNet, 8 in / 5 out)."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionLatentUpscalePipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        act_fn="gelu", attention_head_dim=8, norm_num_groups=None,
        block_out_channels=(32, 32, 64, 64), time_cond_proj_dim=128 + TEXT_HIDDEN,
        conv_in_kernel=1, conv_out_kernel=1, cross_attention_dim=TEXT_HIDDEN,
        down_block_types=("KDownBlock2D",) + ("KCrossAttnDownBlock2D",) * 3,
        up_block_types=("KCrossAttnUpBlock2D",) * 3 + ("KUpBlock2D",), in_channels=8,
        mid_block_type=None, only_cross_attention=False, out_channels=5,
        resnet_time_scale_shift="scale_shift", time_embedding_type="fourier",
        timestep_post_act="gelu", layers_per_block=1, sample_size=16).eval()
    return StableDiffusionLatentUpscalePipeline(
        vae=tiny_vae(seed=seed), text_encoder=tiny_text_encoder(seed=seed),
        tokenizer=tiny_tokenizer(), unet=unet,
        scheduler=EulerDiscreteScheduler(prediction_type="sample"))


def make_latent_upscaler_folder(path, seed: int = 0) -> Path:
    path = Path(path)
    make_latent_upscaler_pipeline(seed).save_pretrained(path)
    return path


def load_pipeline(folder):
    """diffusers' own loading of a tiny folder (the numerical reference), on the CPU in fp32."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.from_pretrained(str(folder), local_files_only=True)
