"""Write diffusers components back in the original CompVis / Stability single-file layout.

Tests use this to make original-layout checkpoints out of tiny diffusers models, then check
that Loom's loader reads them back to the very same weights. The mapping is derived from the
model configs (block counts, layers per block, which blocks have attention), so it works for any
size; it is the inverse of the conversion diffusers applies when loading single files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

UNET = "model.diffusion_model."
VAE = "first_stage_model."


def _resnet_unet(src: str, dst: str, sd: dict[str, torch.Tensor], out: dict[str, torch.Tensor]):
    names = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
             "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
    for k, v in sd.items():
        if k.startswith(src + "."):
            rest = k[len(src) + 1:]
            head, _, tail = rest.partition(".")
            out[f"{dst}.{names[head]}.{tail}"] = v


def _copy(src: str, dst: str, sd: dict[str, torch.Tensor], out: dict[str, torch.Tensor]):
    for k, v in sd.items():
        if k.startswith(src + "."):
            out[dst + k[len(src):]] = v


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    """A diffusers UNet2DConditionModel's weights under original `model.diffusion_model.` keys."""
    sd = {k: v.detach().clone() for k, v in unet.state_dict().items()}
    cfg = unet.config
    lpb = cfg.layers_per_block
    out: dict[str, torch.Tensor] = {}
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
              "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2",
              "class_embedding.linear_1": "label_emb.0.0",
              "class_embedding.linear_2": "label_emb.0.2"}
    for src, dst in simple.items():
        _copy(src, dst, sd, out)
    if "class_embedding.weight" in sd:  # x4 upscaler: noise level embedding
        out["label_emb.weight"] = sd["class_embedding.weight"]

    n_down = len(cfg.down_block_types)
    for i in range(n_down):
        for j in range(lpb):
            idx = 1 + i * (lpb + 1) + j
            _resnet_unet(f"down_blocks.{i}.resnets.{j}", f"input_blocks.{idx}.0", sd, out)
            _copy(f"down_blocks.{i}.attentions.{j}", f"input_blocks.{idx}.1", sd, out)
        if f"down_blocks.{i}.downsamplers.0.conv.weight" in sd:
            idx = (i + 1) * (lpb + 1)
            _copy(f"down_blocks.{i}.downsamplers.0.conv", f"input_blocks.{idx}.0.op", sd, out)

    _resnet_unet("mid_block.resnets.0", "middle_block.0", sd, out)
    _copy("mid_block.attentions.0", "middle_block.1", sd, out)
    _resnet_unet("mid_block.resnets.1", "middle_block.2", sd, out)

    for i in range(len(cfg.up_block_types)):
        for j in range(lpb + 1):
            idx = i * (lpb + 1) + j
            _resnet_unet(f"up_blocks.{i}.resnets.{j}", f"output_blocks.{idx}.0", sd, out)
            _copy(f"up_blocks.{i}.attentions.{j}", f"output_blocks.{idx}.1", sd, out)
        if f"up_blocks.{i}.upsamplers.0.conv.weight" in sd:
            idx = i * (lpb + 1) + lpb
            slot = 2 if f"up_blocks.{i}.attentions.{lpb}.norm.weight" in sd else 1
            _copy(f"up_blocks.{i}.upsamplers.0.conv", f"output_blocks.{idx}.{slot}.conv", sd, out)

    missing = set(sd) - _unet_sources(sd, out)
    if missing:
        raise AssertionError(f"unmapped UNet keys: {sorted(missing)[:5]}")
    return {UNET + k: v for k, v in out.items()}


def _unet_sources(sd: dict[str, torch.Tensor], out: dict[str, torch.Tensor]) -> set[str]:
    ids = {id(v) for v in out.values()}
    return {k for k, v in sd.items() if id(v) in ids}


def _resnet_vae(src: str, dst: str, sd: dict[str, torch.Tensor], out: dict[str, torch.Tensor]):
    for k, v in sd.items():
        if k.startswith(src + "."):
            rest = k[len(src) + 1:].replace("conv_shortcut", "nin_shortcut")
            out[f"{dst}.{rest}"] = v


def _attn_vae(src: str, dst: str, sd: dict[str, torch.Tensor], out: dict[str, torch.Tensor]):
    names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    for k, v in sd.items():
        if k.startswith(src + "."):
            rest = k[len(src) + 1:]
            for a, b in names.items():
                if rest.startswith(a + "."):
                    rest = b + rest[len(a):]
                    break
            if v.ndim == 2:  # the original uses 1x1 convolutions
                v = v[:, :, None, None]
            out[f"{dst}.{rest}"] = v


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    """A diffusers AutoencoderKL's weights under original `first_stage_model.` keys."""
    sd = {k: v.detach().clone() for k, v in vae.state_dict().items()}
    n = len(vae.config.down_block_types)
    out: dict[str, torch.Tensor] = {}
    for part in ("encoder", "decoder"):
        _copy(f"{part}.conv_in", f"{part}.conv_in", sd, out)
        _copy(f"{part}.conv_out", f"{part}.conv_out", sd, out)
        _copy(f"{part}.conv_norm_out", f"{part}.norm_out", sd, out)
        _resnet_vae(f"{part}.mid_block.resnets.0", f"{part}.mid.block_1", sd, out)
        _resnet_vae(f"{part}.mid_block.resnets.1", f"{part}.mid.block_2", sd, out)
        _attn_vae(f"{part}.mid_block.attentions.0", f"{part}.mid.attn_1", sd, out)
    for i in range(n):
        _resnet_vae(f"encoder.down_blocks.{i}.resnets", f"encoder.down.{i}.block", sd, out)
        _copy(f"encoder.down_blocks.{i}.downsamplers.0.conv", f"encoder.down.{i}.downsample.conv",
              sd, out)
        o = n - 1 - i  # the original numbers decoder levels from the lowest resolution up
        _resnet_vae(f"decoder.up_blocks.{i}.resnets", f"decoder.up.{o}.block", sd, out)
        _copy(f"decoder.up_blocks.{i}.upsamplers.0.conv", f"decoder.up.{o}.upsample.conv", sd,
              out)
    for name in ("quant_conv", "post_quant_conv"):
        _copy(name, name, sd, out)
    if len(out) != len(sd):
        raise AssertionError(f"VAE mapping covers {len(out)} of {len(sd)} tensors")
    return {VAE + k: v for k, v in out.items()}


def clip_to_original(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """An OpenAI-CLIP text encoder in the HF layout, as SD1 / SDXL store it (`prefix` is
    "cond_stage_model.transformer." or "conditioner.embedders.0.transformer.")."""
    out = {}
    for k, v in text_encoder.state_dict().items():
        if k.endswith("position_ids"):
            continue
        k = k if k.startswith("text_model.") else "text_model." + k
        out[prefix + k] = v.detach().clone()
    return out


def open_clip_to_original(text_encoder, prefix: str) -> dict[str, torch.Tensor]:
    """A CLIP text encoder in the OpenCLIP layout, as SD2 (`cond_stage_model.model.`) and SDXL
    (`conditioner.embedders.1.model.`) store it: fused q/k/v, `text_projection` as [D, P]."""
    sd = {(k[len("text_model."):] if k.startswith("text_model.") else k): v.detach().clone()
          for k, v in text_encoder.state_dict().items() if not k.endswith("position_ids")}
    out: dict[str, torch.Tensor] = {
        "token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
        "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": sd.pop("final_layer_norm.weight"),
        "ln_final.bias": sd.pop("final_layer_norm.bias"),
    }
    if "text_projection.weight" in sd:
        out["text_projection"] = sd.pop("text_projection.weight").T.contiguous()
    n = text_encoder.config.num_hidden_layers
    for i in range(n):
        src = f"encoder.layers.{i}."
        dst = f"transformer.resblocks.{i}."
        for w in ("weight", "bias"):
            out[dst + f"attn.in_proj_{w}"] = torch.cat(
                [sd.pop(src + f"self_attn.{p}_proj.{w}") for p in ("q", "k", "v")])
            out[dst + f"attn.out_proj.{w}"] = sd.pop(src + f"self_attn.out_proj.{w}")
            out[dst + f"ln_1.{w}"] = sd.pop(src + f"layer_norm1.{w}")
            out[dst + f"ln_2.{w}"] = sd.pop(src + f"layer_norm2.{w}")
            out[dst + f"mlp.c_fc.{w}"] = sd.pop(src + f"mlp.fc1.{w}")
            out[dst + f"mlp.c_proj.{w}"] = sd.pop(src + f"mlp.fc2.{w}")
    if sd:
        raise AssertionError(f"unmapped OpenCLIP keys: {sorted(sd)[:5]}")
    return {prefix + k: v for k, v in out.items()}


def pipeline_to_original(pipe) -> dict[str, torch.Tensor]:
    """The whole pipeline (SD 1.x / 2.x / inpainting / SDXL base / refiner / x4) as one state
    dict in the original layout."""
    sd: dict[str, Any] = {}
    sd.update(unet_to_original(pipe.unet))
    sd.update(vae_to_original(pipe.vae))
    te = getattr(pipe, "text_encoder", None)
    te2 = getattr(pipe, "text_encoder_2", None)
    if te2 is not None:  # SDXL
        if te is not None:
            sd.update(clip_to_original(te, "conditioner.embedders.0.transformer."))
            sd.update(open_clip_to_original(te2, "conditioner.embedders.1.model."))
        else:
            sd.update(open_clip_to_original(te2, "conditioner.embedders.0.model."))
    elif te is not None and te.config.hidden_act == "gelu":  # SD 2.x: OpenCLIP-H
        sd.update(open_clip_to_original(te, "cond_stage_model.model."))
    elif te is not None:
        sd.update(clip_to_original(te, "cond_stage_model.transformer."))
    return {k: v.contiguous() for k, v in sd.items()}


def save_original(pipe, path: Path, metadata: dict[str, str] | None = None) -> Path:
    """Write `pipe` as a single original-layout .safetensors (or .ckpt via torch.save)."""
    sd = pipeline_to_original(pipe)
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(sd, str(path), metadata=metadata)
    else:
        torch.save({"state_dict": sd}, str(path))
    return path
