"""DALL·E 2's own layout (Karlo, diffusers' deprecated UnCLIPPipeline): a prior (CLIP text
encoder + PriorTransformer) gives a CLIP image embedding; `text_proj` turns that embedding and
the text's CLIP embeddings into the decoder's extra context tokens and class embedding; a 64 px
text-conditional pixel decoder with a learned variance draws the image; two UNet2DModels
upsample it, seeing the bicubic-upsampled small image as extra channels (`super_res_first` for
every step but the last, `super_res_last` for the last).

A saved UnCLIPPipeline folder cannot be reloaded as a pipeline by newer diffusers (it is
deprecated), so the parts are loaded one by one from their subfolders. The arithmetic follows
UnCLIPPipeline step for step so that Loom's graph gives the same numbers. Weights are read from
safetensors only; every part lives in the model manager.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from nodes.lib.bundles import Conditioning, ModelBundle
from nodes.lib.denoise import ImageConditioning
from nodes.lib.model_manager import ModelManager, manager, resolve
from nodes.lib.unclip import (
    PriorBundle,
    PriorPrompt,
    UnclipFolderError,
    _handle,
    _need,
    _prior_module,
    _read_json,
    _text_parts,
    _weights_check,
)
from nodes.lib.vram import placement, stage

KARLO = "karlo"  # the prior's and the decoder's family
KARLO_SUPER_RES = "karlo_super_res"
SUBFOLDERS = ("prior", "text_encoder", "tokenizer", "text_proj", "decoder", "super_res_first",
              "super_res_last", "prior_scheduler", "decoder_scheduler", "super_res_scheduler")
SUPER_RES_KIND = "karlo_super_resolution"


def _module(path: Path, sub: str, cls_name: str, dtype, device):
    import diffusers

    _weights_check(path / sub, "diffusion_pytorch_model")
    if cls_name == "UnCLIPTextProjModel":
        from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel as cls
    else:
        cls = getattr(diffusers, cls_name)
    module = cls.from_pretrained(str(path), subfolder=sub, torch_dtype=dtype,
                                 use_safetensors=True, local_files_only=True)
    return stage(module, device)


def _config(path: Path, sub: str, name: str, cls_name: str | None = None) -> dict[str, Any]:
    file = path / sub / name
    if not file.is_file():
        raise UnclipFolderError(f"{path}: {sub}/ has no {name}")
    cfg = _read_json(file)
    if cls_name is not None and cfg.get("_class_name") not in (None, cls_name):
        raise UnclipFolderError(f"{path}: {sub}/ holds a {cfg.get('_class_name')}, expected a "
                                f"{cls_name} (is this a Karlo / UnCLIPPipeline folder?)")
    return cfg


def load_karlo(path: Path, dtype, device, models: ModelManager | None = None
               ) -> tuple[PriorBundle, ModelBundle, ModelBundle, ModelBundle]:
    """The prior, the decoder (a MODEL whose `extra["text_proj"]` is the text projection) and
    the two super-resolution MODELs of a saved UnCLIPPipeline folder."""
    models = manager() if models is None else models
    _need(path, SUBFOLDERS, "a Karlo (UnCLIPPipeline) folder")
    prior_sched = _config(path, "prior_scheduler", "scheduler_config.json")
    decoder_sched = _config(path, "decoder_scheduler", "scheduler_config.json")
    sr_sched = _config(path, "super_res_scheduler", "scheduler_config.json")
    decoder_cfg = _config(path, "decoder", "config.json", "UNet2DConditionModel")
    first_cfg = _config(path, "super_res_first", "config.json", "UNet2DModel")
    last_cfg = _config(path, "super_res_last", "config.json", "UNet2DModel")
    proj_cfg = _config(path, "text_proj", "config.json", "UnCLIPTextProjModel")
    if decoder_cfg.get("class_embed_type") != "identity":
        raise UnclipFolderError(f"{path}: decoder/ takes no CLIP time embedding "
                                "(class_embed_type is not 'identity'); not a Karlo decoder")
    if int(first_cfg.get("in_channels", 0)) != int(last_cfg.get("in_channels", -1)):
        raise UnclipFolderError(f"{path}: super_res_first/ and super_res_last/ take different "
                                "input channels")

    text_h = _handle(models, path, "prior_text", dtype, device,
                     lambda: _text_parts(path, "tokenizer", "text_encoder", dtype, device))
    prior_h = _handle(models, path, "prior", dtype, device,
                      lambda: _prior_module(path, "prior", dtype, device))
    prior = PriorBundle(text_h, prior_h, prior_sched, KARLO, dtype, device, str(path))

    def unet(sub: str, cls_name: str):
        return _handle(models, path, sub, dtype, device,
                       lambda: _module(path, sub, cls_name, dtype, device))

    proj_h = unet("text_proj", "UnCLIPTextProjModel")
    decoder = ModelBundle(
        unet("decoder", "UNet2DConditionModel"), KARLO,
        decoder_sched.get("prediction_type", "epsilon"), decoder_sched, dtype, device, str(path),
        {"sample_channels": int(decoder_cfg.get("in_channels", 3)), "text_proj": proj_h,
         "clip_dim": int(proj_cfg.get("clip_embeddings_dim", 768)),
         "sample_size": decoder_cfg.get("sample_size"), "kind": "karlo_decoder"})
    supers = []
    for sub, cfg in (("super_res_first", first_cfg), ("super_res_last", last_cfg)):
        supers.append(ModelBundle(
            unet(sub, "UNet2DModel"), KARLO_SUPER_RES,
            sr_sched.get("prediction_type", "epsilon"), sr_sched, dtype, device, str(path),
            {"sample_channels": int(cfg.get("in_channels", 6)) // 2,
             "sample_size": cfg.get("sample_size"), "kind": "karlo_super_res"}))
    return prior, decoder, supers[0], supers[1]


def is_karlo_decoder(model: ModelBundle) -> bool:
    return (model.extra or {}).get("text_proj") is not None


@torch.no_grad()
def decoder_conditioning(model: ModelBundle, prompt: PriorPrompt, embeds: torch.Tensor
                         ) -> tuple[Conditioning, Conditioning]:
    """The decoder's positive and negative conditioning (UnCLIPTextProjModel): the text's
    hidden states projected and normalised, after four extra context tokens made from the image
    embedding; the image and text embeddings projected to the UNet's class embedding (added to
    its timestep embedding); the text's attention mask opened for the extra tokens. The
    negative uses the unconditional text and the learned classifier-free-guidance embedding in
    place of the image embedding, as the pipeline does."""
    proj = resolve(model.extra["text_proj"])
    p = placement(proj)
    batch = embeds.shape[0]
    n_extra = int(proj.config.clip_extra_context_tokens)

    def rows(t: torch.Tensor) -> torch.Tensor:
        return t[:1].to(p.device).repeat_interleave(batch, dim=0)

    def make(image: torch.Tensor, text: torch.Tensor, hidden: torch.Tensor,
             mask: torch.Tensor) -> Conditioning:
        states, time_emb = proj(image_embeddings=image.to(p.device, p.dtype),
                                prompt_embeds=rows(text).to(p.dtype),
                                text_encoder_hidden_states=rows(hidden).to(p.dtype),
                                do_classifier_free_guidance=False)
        full_mask = F.pad(rows(mask), (n_extra, 0), value=True)
        return Conditioning(states.float(), None, KARLO, {"attention_mask": full_mask},
                            time_emb.float())

    positive = make(embeds.float(), prompt.embeds, prompt.hidden, prompt.mask)
    learned = proj.learned_classifier_free_guidance_embeddings.unsqueeze(0).expand(batch, -1)
    negative = make(learned, prompt.u_embeds, prompt.u_hidden, prompt.u_mask)
    return positive, negative


def super_resolution_condition(low_res: torch.Tensor, width: int, height: int
                               ) -> ImageConditioning:
    """The super-resolution UNets' extra channels: the decoder's image clamped to [-1, 1] and
    upsampled bicubically with antialiasing (UnCLIPPipeline's `image_upscaled`)."""
    small = low_res.float().clamp(-1, 1)
    kwargs = {"antialias": True} if "antialias" in inspect.signature(F.interpolate).parameters \
        else {}
    up = F.interpolate(small, size=[int(height), int(width)], mode="bicubic",
                       align_corners=False, **kwargs)
    return ImageConditioning(concat=up.cpu(), kind=SUPER_RES_KIND)


class LastStepsDenoiser:
    """A guided denoiser that asks `first` for the early steps of a Sampler run and `last` for
    its final `steps` (UnCLIPPipeline's super_res_first / super_res_last). The Sampler reads
    the model (scheduler config, device, family) of `first`."""

    guided = True

    def __init__(self, first: Any, last: Any, steps: int = 1):
        self.first = first
        self.last = last
        self.steps = int(steps)

    def __loom_cache_size__(self) -> int:
        return 0

    @property
    def model(self) -> ModelBundle:
        return self.first.model

    @property
    def in_channels(self) -> int:
        return self.first.in_channels

    def check_latents(self, shape) -> str | None:
        for d in (self.first, self.last):
            check = getattr(d, "check_latents", None)
            problem = check(shape) if check is not None else None
            if problem:
                return problem
        return None

    def __call__(self, x: torch.Tensor, t: Any, image_cond: ImageConditioning | None = None,
                 step: Any = None) -> torch.Tensor:
        use_last = step is not None and step.index >= step.count - self.steps
        return (self.last if use_last else self.first)(x, t, image_cond, step=step)
