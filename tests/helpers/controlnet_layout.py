"""Write a diffusers ControlNetModel's weights in the original ControlNet 1.x single-file layout
(`input_hint_block`, `zero_convs`, `middle_block_out`, the UNet encoder's `input_blocks` /
`middle_block` names), so tests can check that Loom's loader reads such files back to the very
same weights. Derived from the config (blocks, layers per block), so it works for tiny and
real-size models alike; the inverse of the conversion diffusers applies to these files."""

from __future__ import annotations

import torch

from tools.original_layout import _copy, _resnet_unet


def controlnet_to_original(controlnet, prefix: str = "") -> dict[str, torch.Tensor]:
    """The ControlNet's weights under original keys (`prefix`: "" as in the ControlNet 1.1
    releases, "control_model." as in 1.0's)."""
    sd = {k: v.detach().clone() for k, v in controlnet.state_dict().items()}
    cfg = controlnet.config
    lpb = cfg.layers_per_block
    out: dict[str, torch.Tensor] = {}
    simple = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
              "conv_in": "input_blocks.0.0", "add_embedding.linear_1": "label_emb.0.0",
              "add_embedding.linear_2": "label_emb.0.2",
              "controlnet_mid_block": "middle_block_out.0",
              "controlnet_cond_embedding.conv_in": "input_hint_block.0"}
    for src, dst in simple.items():
        _copy(src, dst, sd, out)
    n_hint = len(cfg.conditioning_embedding_out_channels) - 1
    for j in range(2 * n_hint):
        _copy(f"controlnet_cond_embedding.blocks.{j}", f"input_hint_block.{2 * (j + 1)}", sd, out)
    _copy("controlnet_cond_embedding.conv_out", f"input_hint_block.{2 * (2 * n_hint + 1)}", sd,
          out)
    for i in range(len(cfg.down_block_types)):
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
    n_zero = sum(1 for k in sd if k.startswith("controlnet_down_blocks.") and k.endswith(".weight"))
    for i in range(n_zero):
        _copy(f"controlnet_down_blocks.{i}", f"zero_convs.{i}.0", sd, out)
    ids = {id(v) for v in out.values()}
    missing = [k for k, v in sd.items() if id(v) not in ids]
    if missing:
        raise AssertionError(f"unmapped ControlNet keys: {sorted(missing)[:5]}")
    return {prefix + k: v for k, v in out.items()}
