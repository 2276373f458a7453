"""ControlNet: loading one (through the model manager) and the residuals it adds to a UNet call.

Applying follows diffusers' StableDiffusion(XL)ControlNetPipeline exactly, so a Loom graph gives
the pipeline's numbers:
- the control image is used as it is, 0..1 RGB (the pipeline's control image processor has
  do_normalize=False), repeated over the batch and over the rows of classifier-free guidance;
- each ControlNet sees the UNet's input latents (without an inpainting model's extra channels),
  timestep, text embeddings and (SDXL) pooled embeddings and size ids, and its down and middle
  residuals, times its strength, are added to the UNet's skip connections;
- several ControlNets add up, in the order they were applied (MultiControlNetModel's sum);
- start/end: a ControlNet acts on step i of n when i / n >= start and (i + 1) / n <= end
  (the pipeline's `controlnet_keep`; step indices, not timesteps). On the other steps it is
  not run at all, which gives the same numbers as the pipeline's residuals times 0;
- guess mode (or a ControlNet whose config pools its conditions, like the shuffle model): the
  ControlNet sees only the prompt's rows, the negative prompt's rows get no residuals, and the
  residuals are scaled from 0.1 (first block) to 1 (middle block), as in the pipeline.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.paths import file_identity
from nodes.lib.checkpoints import (
    CONFIGS_DIR,
    _dtype_name,
    _empty,
    _read_pickled_state_dict,
    _variant,
    resolve_device,
    resolve_dtype,
)
from nodes.lib.controlnet_files import (
    FAMILY_CONFIG_DIRS,
    LDM_PREFIX,
    check_config,
    config_family,
    config_file,
    family_from_shapes,
    layout_of,
    locate,
)
from nodes.lib.families import FAMILY_TABLE
from nodes.lib.model_files import CheckpointError, read_json_object
from nodes.lib.model_manager import ModelHandle, ModelManager, manager, resolve
from nodes.lib.vram import stage


@dataclass(eq=False)
class ControlNetBundle:
    """What travels on CONTROL_NET edges: a handle to the weights (the model manager owns them)
    and the config, which the compatibility check reads without loading anything."""

    net_ref: Any  # a ModelHandle, or (built by hand) the ControlNetModel itself
    family: str  # "sd1" | "sd2" | "sdxl": the models it was made for
    config: dict[str, Any]
    dtype: Any
    device: Any
    source: str

    @property
    def net(self) -> Any:
        """The ControlNetModel, for as long as the caller holds it (reloaded if evicted)."""
        return resolve(self.net_ref)

    @property
    def downscale(self) -> int:
        """Control image pixels per latent pixel (its conditioning embedding's strides)."""
        chans = self.config.get("conditioning_embedding_out_channels") or (16, 32, 96, 256)
        return 2 ** (len(chans) - 1)

    def __loom_cache_size__(self) -> int:
        return 0  # the model manager owns this memory, not the result cache


# ---- loading --------------------------------------------------------------------------------


def load_controlnet(path: Path | str, dtype: str = "auto", device: str = "auto",
                    config: Path | str | None = None,
                    models: ModelManager | None = None) -> ControlNetBundle:
    """Load (or take from the model manager) the ControlNet at `path`: a diffusers folder, a
    pipeline folder's controlnet/, or a single file (original or diffusers layout; `config`
    overrides the configuration Loom derives for it)."""
    models = manager() if models is None else models
    src = locate(Path(path))
    if config and src.kind == "folder":
        raise CheckpointError(f"{src.path} is a diffusers folder with its own config.json; "
                              "a config is only for single files")
    dev = resolve_device(device)
    dt = resolve_dtype(dtype, dev)
    given = config_file(Path(config)) if config else None
    cfg_key = file_identity(Path(config)) if config else ""
    key = (file_identity(src.path), f"controlnet@{cfg_key}", _dtype_name(dt), str(dev))

    def build():
        if src.kind == "folder":
            from diffusers import ControlNetModel

            net = ControlNetModel.from_pretrained(
                str(src.path), torch_dtype=dt, use_safetensors=True, local_files_only=True,
                variant=_variant(src.path, "diffusion_pytorch_model"))
            return stage(net, dev)
        state = _read_state(src.path)
        cfg = given if given is not None else single_file_config(
            {k: tuple(v.shape) for k, v in state.items()}, src.path.name)
        check_config(cfg, src.path)
        return _from_state(state, cfg, src.path.name, dt, dev)

    handle = ModelHandle(models, key, build)
    # load now (errors and time belong to the loader node); the bundle keeps only the handle
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in handle.preload().config.items()}
    return ControlNetBundle(handle, config_family(cfg), cfg, dt, dev, str(src.path))


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return _read_pickled_state_dict(path)


def _controlnet_params() -> set[str]:
    from diffusers import ControlNetModel

    return set(inspect.signature(ControlNetModel.__init__).parameters) - {"self"}


def single_file_config(shapes: dict[str, tuple[int, ...]], name: str) -> dict[str, Any]:
    """The ControlNetModel config of a single file (from its keys and shapes): its family's
    UNet config (Loom's resources/configs) copied as ControlNetModel.from_unet copies it, with
    the conditioning embedding's channels and the input channels read from the weights."""
    layout = layout_of(shapes)
    family = family_from_shapes(shapes)
    unet_cfg = read_json_object(CONFIGS_DIR / FAMILY_CONFIG_DIRS[family] / "unet" / "config.json")
    params = _controlnet_params()
    cfg: dict[str, Any] = {k: v for k, v in unet_cfg.items() if k in params}
    cfg["_class_name"] = "ControlNetModel"
    if layout == "diffusers":
        conv_in, hint = "conv_in.weight", "controlnet_cond_embedding."
        hint_convs = sorted((int(k.split(".")[2]), s) for k, s in shapes.items()
                            if k.startswith(hint + "blocks.") and k.endswith(".weight"))
        first = shapes.get(hint + "conv_in.weight")
        middle = [s for _, s in hint_convs]
    else:
        pre = LDM_PREFIX if layout == "ldm_prefixed" else ""
        conv_in, hint = pre + "input_blocks.0.0.weight", pre + "input_hint_block."
        convs = sorted((int(k[len(hint):].split(".")[0]), s) for k, s in shapes.items()
                       if k.startswith(hint) and k.endswith(".weight") and len(s) == 4)
        first = convs[0][1] if convs else None
        middle = [s for _, s in convs[1:-1]]
    if first is None or conv_in not in shapes:
        raise CheckpointError(f"{name}: incomplete ControlNet weights (no {conv_in} or no "
                              "conditioning embedding input convolution)")
    cfg["in_channels"] = int(shapes[conv_in][1])
    cfg["conditioning_channels"] = int(first[1])
    # conv_in, then pairs (same width, then the next width at stride 2), then conv_out
    cfg["conditioning_embedding_out_channels"] = [int(first[0])] + [int(s[0])
                                                                    for s in middle[1::2]]
    return cfg


def _from_state(state: dict[str, torch.Tensor], cfg: dict[str, Any], name: str,
                dtype: torch.dtype, device: torch.device):
    from diffusers import ControlNetModel
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    layout = layout_of(state)
    if layout == "diffusers":
        converted = dict(state)
    else:
        converted = convert_controlnet_checkpoint(state, cfg)
        # diffusers' conversion leaves out SDXL's added (size / pooled text) embedding
        pre = LDM_PREFIX if layout == "ldm_prefixed" else ""
        for ldm, ours in (("label_emb.0.0", "add_embedding.linear_1"),
                          ("label_emb.0.2", "add_embedding.linear_2")):
            for part in ("weight", "bias"):
                if f"{pre}{ldm}.{part}" in state:
                    converted[f"{ours}.{part}"] = state[f"{pre}{ldm}.{part}"]
    model = _empty(lambda: ControlNetModel.from_config(
        {k: v for k, v in cfg.items() if not k.startswith("_")}))
    target = model.state_dict()
    missing = [k for k in target if k not in converted]
    extra = [k for k in converted if k not in target]
    shapes = [f"{k} {tuple(converted[k].shape)} vs {tuple(v.shape)}" for k, v in target.items()
              if k in converted and tuple(converted[k].shape) != tuple(v.shape)]
    if missing or extra or shapes:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if extra:
            detail.append(f"{len(extra)} not in the configuration (e.g. {', '.join(extra[:3])})")
        if shapes:
            detail.append(f"{len(shapes)} of another shape (e.g. {'; '.join(shapes[:3])})")
        raise CheckpointError(
            f"{name}: the weights do not fit the {config_family(cfg)} ControlNet configuration: "
            f"{', '.join(detail)}. For a ControlNet of unusual shape (e.g. SDXL 'small' or "
            "'mid'), give its diffusers config.json as the loader's config.")
    fixed = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in converted.items()}
    model.load_state_dict(fixed, strict=True, assign=True)
    return stage(model, device)


# ---- compatibility --------------------------------------------------------------------------


def _describe(cfg: Any) -> str:
    get = cfg.get if isinstance(cfg, dict) else (lambda k, d=None: getattr(cfg, k, d))
    blocks = "/".join(str(c) for c in get("block_out_channels", ()) or ())
    text = f"cross-attention width {get('cross_attention_dim')}, block widths {blocks}"
    if get("addition_embed_type") == "text_time":
        text += ", SDXL size conditioning"
    return text


def compatibility_problem(net: ControlNetBundle, unet_config: Any, model_family: str) -> str | None:
    """Why the ControlNet cannot steer this UNet (its residuals would not fit the UNet's skip
    connections, or it reads other conditioning), or None."""
    cfg = net.config
    get = unet_config.get if isinstance(unet_config, dict) else \
        (lambda k, d=None: getattr(unet_config, k, d))

    def norm(v: Any) -> Any:
        return tuple(v) if isinstance(v, (list, tuple)) else v

    same = (
        norm(cfg.get("block_out_channels")) == norm(get("block_out_channels"))
        and norm(cfg.get("layers_per_block", 2)) == norm(get("layers_per_block"))
        and len(cfg.get("down_block_types") or ()) == len(get("down_block_types") or ())
        and norm(cfg.get("cross_attention_dim")) == norm(get("cross_attention_dim"))
        and cfg.get("addition_embed_type") == get("addition_embed_type")
        and int(cfg.get("in_channels", 4)) == int(get("out_channels", 4))
    )
    if same:
        return None
    ours = FAMILY_TABLE[net.family].title if net.family in FAMILY_TABLE else net.family
    theirs = FAMILY_TABLE[model_family].title if model_family in FAMILY_TABLE else model_family
    return (f"this ControlNet is made for {ours} models ({_describe(cfg)}), but the model is "
            f"{theirs} ({_describe(unet_config)}); load a ControlNet made for {theirs}")


# ---- applying -------------------------------------------------------------------------------


@dataclass(eq=False)
class Control:
    """One applied ControlNet: what Apply ControlNet adds to a UNet Step's denoiser."""

    net: ControlNetBundle
    image: Any  # IMAGE [1 or B, 3, H, W], 0..1
    strength: float
    start: float = 0.0
    end: float = 1.0
    guess_mode: bool = False
    where: str = "Apply ControlNet"  # for messages: which node applied it

    def __loom_cache_size__(self) -> int:
        return 0  # the image is an upstream node's output, cached there

    def active(self, step: Any) -> bool:
        """Whether it acts on this sampler step (diffusers' controlnet_keep rule)."""
        if self.strength == 0.0:
            return False
        if step is None:
            if self.start <= 0.0 and self.end >= 1.0:
                return True
            raise ValueError(f"{self.where}: a start/end interval needs the sampler's step "
                             "index; run it through the Sampler")
        i, n = int(step[0]), int(step[1])
        return not (i / n < self.start or (i + 1) / n > self.end)

    def size_problem(self, latent_shape: Sequence[int]) -> str | None:
        """Why the control image does not fit latents of this shape [B, C, h, w], or None."""
        batch, h, w = int(latent_shape[0]), int(latent_shape[-2]), int(latent_shape[-1])
        f = self.net.downscale
        ib, ih, iw = int(self.image.shape[0]), int(self.image.shape[-2]), int(self.image.shape[-1])
        if (ih, iw) != (h * f, w * f):
            return (f"{self.where}, input 'image': the control image is {iw}x{ih} but the image "
                    f"being made is {w * f}x{h * f}; resize the control image to {w * f}x{h * f} "
                    "(Resize Image) or make the Latent Noise the control image's size")
        if ib not in (1, batch):
            return (f"{self.where}, input 'image': {ib} control images for a batch of {batch}; "
                    "give one (used for every image) or one per image")
        return None

    def rows(self, b: int, blocks: int, device: Any, dtype: Any) -> torch.Tensor:
        """The control image for `blocks` conditioning blocks of `b` rows each."""
        img = self.image.to(dtype=torch.float32)
        if img.shape[0] == 1 and b > 1:
            img = img.repeat(b, 1, 1, 1)
        elif img.shape[0] != b:
            raise ValueError(f"{self.where}, input 'image': {img.shape[0]} control images "
                             f"for a batch of {b}")
        return torch.cat([img] * blocks).to(device=device, dtype=dtype)


def _take(t: torch.Tensor, blocks: list[int], b: int, k: int) -> torch.Tensor:
    if len(blocks) == k:
        return t
    return torch.cat([t[i * b:(i + 1) * b] for i in blocks])


def _spread(t: torch.Tensor, blocks: list[int], b: int, k: int) -> torch.Tensor:
    """Rows computed for `blocks` back to all k blocks, zeros for the others."""
    if len(blocks) == k:
        return t
    parts = []
    for i in range(k):
        if i in blocks:
            j = blocks.index(i)
            parts.append(t[j * b:(j + 1) * b])
        else:
            parts.append(torch.zeros_like(t[:b]))
    return torch.cat(parts)


def residual_kwargs(controls: Sequence[Control], x: torch.Tensor, t: Any, embeds: torch.Tensor,
                    added: dict[str, torch.Tensor] | None, negative: Sequence[bool], b: int,
                    step: Any, unet_dtype: torch.dtype) -> dict[str, Any]:
    """The UNet's down_block_additional_residuals / mid_block_additional_residual: the sum of
    every control active at this step ({} when none is)."""
    k = len(negative)
    down: list[torch.Tensor] | None = None
    mid: torch.Tensor | None = None
    for c in controls:
        if not c.active(step):
            continue
        bundle = c.net
        net = bundle.net
        dtype = bundle.dtype or next(net.parameters()).dtype
        guess = bool(c.guess_mode or net.config.global_pool_conditions)
        blocks = [i for i in range(k) if not (guess and negative[i])]
        if not blocks:
            continue
        cond_kwargs = None
        if added is not None:
            cond_kwargs = {"text_embeds": _take(added["text_embeds"], blocks, b, k).to(dtype),
                           "time_ids": _take(added["time_ids"], blocks, b, k)}
        d, m = net(_take(x, blocks, b, k).to(dtype), t,
                   encoder_hidden_states=_take(embeds, blocks, b, k).to(dtype),
                   controlnet_cond=c.rows(b, len(blocks), x.device, dtype),
                   conditioning_scale=float(c.strength), guess_mode=guess,
                   added_cond_kwargs=cond_kwargs, return_dict=False)
        d = [_spread(r, blocks, b, k).to(unet_dtype) for r in d]
        m = _spread(m, blocks, b, k).to(unet_dtype)
        if down is None:
            down, mid = d, m
        else:
            down = [p + q for p, q in zip(down, d)]
            mid = mid + m
    if down is None:
        return {}
    return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}
