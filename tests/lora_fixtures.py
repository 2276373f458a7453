"""LoRA and embedding files written by the tests, in the layouts people download.

Layers are random low-rank updates of chosen Linear / Conv2d modules of a model; the writers
lay the same layers out as kohya / A1111 files (diffusers block names for SD 1.x, the original
UNet's `input_blocks_...` names for SDXL), as diffusers / PEFT files (with or without diffusers'
`lora_adapter_metadata`) and as a LyCORIS LoHa file (which must be refused)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
TE_ALL = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


def random_layers(model: torch.nn.Module, suffixes: tuple[str, ...], rank: int = 4,
                  seed: int = 0, scale: float = 0.3) -> dict[str, tuple[torch.Tensor, ...]]:
    """{module name: (down, up)} for the Linear / Conv2d modules whose names end in a suffix;
    convolutions get LoCon shapes (down [r, in, kh, kw], up [out, r, 1, 1])."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name, m in model.named_modules():
        if not isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if not name.endswith(suffixes):
            continue
        w = m.weight
        down = torch.randn((rank, *w.shape[1:]), generator=g) * scale
        up = torch.randn((w.shape[0], rank, *([1] * (w.ndim - 2))), generator=g) * scale
        out[name] = (down, up)
    assert out, f"no module ends in {suffixes}"
    return out


def te_name(name: str) -> str:
    """A text-encoder module name as kohya / older transformers spell it (with text_model.)."""
    return name if name.startswith("text_model.") else "text_model." + name


def sgm_name(module: str, layers_per_block: int) -> str:
    """The original (sgm) UNet's name of a diffusers attention module, as SDXL kohya files use
    it: down_blocks.1.attentions.0 -> input_blocks.<n>.1, up_blocks -> output_blocks, mid."""
    n = layers_per_block
    m = re.match(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", module)
    if m:
        return f"input_blocks.{int(m[1]) * (n + 1) + int(m[2]) + 1}.1.{m[3]}"
    m = re.match(r"up_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", module)
    if m:
        return f"output_blocks.{int(m[1]) * (n + 1) + int(m[2])}.1.{m[3]}"
    m = re.match(r"mid_block\.attentions\.0\.(.*)", module)
    if m:
        return f"middle_block.1.{m[1]}"
    raise ValueError(f"no sgm name for {module}")


def write_kohya(path: Path, unet: dict, text: dict[str, dict], alpha: float | dict | None = 2.0,
                sgm_layers_per_block: int | None = None) -> Path:
    """A kohya / A1111 file. `text`: {"lora_te" | "lora_te1" | "lora_te2": layers}; `alpha`
    one value for every layer, {module: value}, or None (no .alpha keys)."""
    sd = {}

    def put(prefix: str, name: str, module: str, down, up):
        key = f"{prefix}_{name.replace('.', '_')}"
        sd[f"{key}.lora_down.weight"] = down.contiguous()
        sd[f"{key}.lora_up.weight"] = up.contiguous()
        a = alpha.get(module) if isinstance(alpha, dict) else alpha
        if a is not None:
            sd[f"{key}.alpha"] = torch.tensor(float(a))

    for module, (down, up) in unet.items():
        name = sgm_name(module, sgm_layers_per_block) if sgm_layers_per_block else module
        put("lora_unet", name, module, down, up)
    for prefix, layers in text.items():
        for module, (down, up) in layers.items():
            put(prefix, te_name(module), module, down, up)
    save_file(sd, str(path))
    return path


def write_peft(path: Path, unet: dict, text: dict[str, dict], metadata: dict | None = None,
               text_model_prefix: bool = False) -> Path:
    """A diffusers / PEFT file: `unet.<module>.lora_A.weight` ...; `text`: {"text_encoder" |
    "text_encoder_2": layers}; `metadata`: {component: LoraConfig fields} written as diffusers
    writes it (the `lora_adapter_metadata` JSON, keys prefixed with the component)."""
    sd = {}
    for comp, layers in (("unet", unet), *text.items()):
        for module, (down, up) in layers.items():
            name = te_name(module) if comp != "unet" and text_model_prefix else module
            sd[f"{comp}.{name}.lora_A.weight"] = down.contiguous()
            sd[f"{comp}.{name}.lora_B.weight"] = up.contiguous()
    header = {"format": "pt"}
    if metadata:
        flat = {f"{comp}.{k}": v for comp, cfg in metadata.items() for k, v in cfg.items()}
        header["lora_adapter_metadata"] = json.dumps(flat, sort_keys=True)
    save_file(sd, str(path), metadata=header)
    return path


def peft_config(layers: dict, rank: int, alpha: float, alpha_pattern: dict | None = None
                ) -> dict:
    """LoraConfig fields as diffusers saves them (what `LoraConfig(**fields)` reads back)."""
    targets = sorted({m for m in layers})
    return {"r": rank, "lora_alpha": alpha, "target_modules": targets,
            "alpha_pattern": alpha_pattern or {}, "rank_pattern": {}, "use_dora": False,
            "use_rslora": False, "lora_bias": False, "init_lora_weights": True}


def write_loha(path: Path, module: str = "lora_unet_down_blocks_1_attentions_0_proj_in") -> Path:
    g = torch.Generator().manual_seed(0)
    sd = {f"{module}.{k}": torch.randn(4, 8, generator=g)
          for k in ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b")}
    sd[f"{module}.alpha"] = torch.tensor(4.0)
    save_file(sd, str(path))
    return path


# ---- textual inversion embeddings ---------------------------------------------------------


def random_vectors(n: int, width: int, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    return torch.randn(n, width, generator=torch.Generator().manual_seed(seed)) * scale


def write_a1111_pt(path: Path, vectors: torch.Tensor, name: str = "emb") -> Path:
    """AUTOMATIC1111's .pt: string_to_param / string_to_token / name / step (plain data)."""
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": vectors},
                "name": name, "step": 500, "sd_checkpoint": "0" * 10,
                "sd_checkpoint_name": "model"}, str(path))
    return path


def write_a1111_safetensors(path: Path, vectors: torch.Tensor) -> Path:
    save_file({"emb_params": vectors.contiguous()}, str(path))
    return path


def write_learned_embeds(path: Path, token: str, vectors: torch.Tensor) -> Path:
    """diffusers' learned_embeds: {token: vectors} (.bin pickled, or .safetensors)."""
    if path.suffix == ".safetensors":
        save_file({token: vectors.contiguous()}, str(path))
    else:
        torch.save({token: vectors}, str(path))
    return path


def write_sdxl_embedding(path: Path, clip_l: torch.Tensor, clip_g: torch.Tensor) -> Path:
    save_file({"clip_l": clip_l.contiguous(), "clip_g": clip_g.contiguous()}, str(path))
    return path
