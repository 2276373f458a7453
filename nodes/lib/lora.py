"""LoRA: low-rank updates of the UNet's and the text encoders' weights, merged into copies.

The files people download come in two layouts, both read with diffusers' own key converters:
- kohya / A1111: `lora_unet_<module>`, `lora_te_<module>` (SDXL: `lora_te1_` / `lora_te2_`),
  each with `.lora_down.weight`, `.lora_up.weight` and `.alpha`; SD 1.x files name UNet modules
  as diffusers does, SDXL files as the original (sgm) UNet does (`input_blocks_4_1_...`), which
  diffusers maps with the UNet's config. LyCORIS LoCon is the same keys on convolutions.
  (diffusers.loaders.lora_conversion_utils)
- diffusers / PEFT: `unet.<module>.lora_A.weight` / `.lora_B.weight`, `text_encoder.` and
  `text_encoder_2.` likewise (module names with or without `text_model.`; the older
  `to_q_lora.down` spelling too), alpha from the `lora_adapter_metadata` JSON that diffusers
  writes into the safetensors header (`unet.lora_alpha`, `unet.alpha_pattern`, `use_rslora`),
  else alpha = rank. (diffusers.utils.state_dict_utils)
LoHa / LoKr (LyCORIS), DoRA and CP-decomposed LoCon files are refused by name: diffusers'
converters for these models do not read them either.

A layer's update is strength * alpha / rank * up @ down (alpha / sqrt(rank) with rsLoRA), as
PEFT computes it. A patched model is a copy of the base model in which the patched weights are
new tensors (W + the sum of the updates, computed in fp32, cast back to the model's dtype) and
every other weight is the base model's own tensor, shared and never written. The copy is a model
manager entry keyed by (base key, patches), borrowed through a handle like any loaded model, so
the memory budget counts it and may evict it (it is rebuilt from the base and the LoRA files).
The base weights never change: strength 0, or no LoRA, is the base model itself, bit for bit,
however often the strengths change.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import types
import uuid
import weakref
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engine.paths import file_identity
from nodes.lib.model_manager import ModelHandle, ModelManager, manager

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt", ".bin", ".pth")
KOHYA_PREFIXES = ("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")
METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
UNET = "unet"
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")


class LoraError(ValueError):
    """A file that is not a LoRA Loom can apply to this model; the message says why."""


# ---- one file -----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class LoraLayer:
    """The update of one Linear or Conv2d weight: up @ down, scaled by alpha / rank."""

    down: torch.Tensor  # lora_A / lora_down: [rank, in] or [rank, in, kh, kw]
    up: torch.Tensor  # lora_B / lora_up: [out, rank] or [out, rank, 1, 1]
    alpha: float | None = None  # None: alpha = rank (scale 1)
    rslora: bool = False

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])

    @property
    def scale(self) -> float:
        alpha = float(self.rank) if self.alpha is None else float(self.alpha)
        return alpha / (self.rank ** 0.5 if self.rslora else self.rank)

    def fits(self, weight: torch.Tensor) -> bool:
        """Whether up @ down has the shape of `weight` (a Linear's 2-D or a conv's 4-D)."""
        up, down = self.up.flatten(1), self.down.flatten(1)
        return (weight.ndim >= 2 and up.shape[1] == down.shape[0]
                and up.shape[0] == weight.shape[0] and down.shape[1] == weight[0].numel())

    def delta(self, weight: torch.Tensor) -> torch.Tensor:
        """up @ down in fp32 on the weight's device, shaped like the weight (unscaled)."""
        up = self.up.to(weight.device, torch.float32).flatten(1)
        down = self.down.to(weight.device, torch.float32).flatten(1)
        return (up @ down).reshape(weight.shape)

    def factors(self, device: torch.device, factor: float) -> tuple[torch.Tensor, ...]:
        """(factor * scale * up, down) as fp32 matrices on `device`: their product is the
        update; the scale goes into the small `up` so the product is added in one pass."""
        up = self.up.to(device, torch.float32).flatten(1) * (factor * self.scale)
        return up, self.down.to(device, torch.float32).flatten(1)


@dataclass(eq=False)
class LoraFile:
    """A LoRA file's layers by component ("unet", "text_encoder", "text_encoder_2") and by the
    module name in diffusers' / transformers' models."""

    path: str
    identity: str
    format: str  # "kohya" | "diffusers"
    layers: dict[str, dict[str, LoraLayer]]
    n_tensors: int

    @property
    def n_layers(self) -> int:
        return sum(len(v) for v in self.layers.values())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for comp in self.layers.values()
                   for layer in comp.values() for t in (layer.down, layer.up))


def read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and the header metadata of a LoRA file: safetensors, or a pickled file read
    with torch.load(weights_only=True), which refuses anything but plain tensors."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                metadata = dict(f.metadata() or {})
                return {k: f.get_tensor(k) for k in f.keys()}, metadata
        except (SafetensorError, OSError) as exc:
            raise LoraError(f"{path.name} cannot be read as a safetensors file ({exc})") from exc
    if suffix in LORA_SUFFIXES:
        from nodes.lib.checkpoints import _read_pickled_state_dict
        from nodes.lib.model_files import CheckpointError

        try:
            return _read_pickled_state_dict(path), {}
        except CheckpointError as exc:
            raise LoraError(str(exc)) from exc
    raise LoraError(f"{path.name}: expected a LoRA file ({', '.join(LORA_SUFFIXES)})")


_UNSUPPORTED = (
    ("hada_", "a LyCORIS LoHa (Hadamard product) file"),
    ("lokr_", "a LyCORIS LoKr (Kronecker product) file"),
    (".lora_mid.", "a LyCORIS LoCon file with CP decomposition (lora_mid)"),
    ("dora_scale", "a DoRA file (weight-decomposed LoRA)"),
    ("lora_magnitude_vector", "a DoRA file (weight-decomposed LoRA)"),
    (".lora_B.bias", "a LoRA with biases (lora_B.bias)"),
)


def parse_lora(state_dict: dict[str, torch.Tensor], metadata: dict[str, str] | None = None,
               layers_per_block: int | None = None, name: str = "the file") -> tuple[
                   str, dict[str, dict[str, LoraLayer]]]:
    """(format, layers by component and module) of a LoRA state dict. `layers_per_block` (the
    UNet config's) maps the original-UNet block names of SDXL kohya files."""
    keys = list(state_dict)
    if not keys:
        raise LoraError(f"{name} holds no tensors")
    for marker, what in _UNSUPPORTED:
        if any(marker in k for k in keys):
            raise LoraError(f"{name} is {what}, which Loom does not apply (diffusers' LoRA "
                            "loader does not read it either); LoRA and LoCon files work")
    if all(k.startswith(KOHYA_PREFIXES) for k in keys):
        return "kohya", _parse_kohya(state_dict, layers_per_block, name)
    if any(re.search(r"lora_[AB]\.|lora\.(down|up)\.|_lora\.(down|up)\.|lora_linear_layer\.", k)
           for k in keys):
        return "diffusers", _parse_diffusers(state_dict, metadata or {}, name)
    shown = ", ".join(repr(k) for k in keys[:3])
    raise LoraError(
        f"{name} is not a LoRA file: none of its {len(keys)} keys ({shown}, ...) has a LoRA "
        "name (kohya 'lora_unet_...' / 'lora_te_...', or diffusers 'unet....lora_A.weight'); "
        "a full checkpoint is loaded with Load Checkpoint")


def _parse_kohya(state_dict: dict[str, torch.Tensor], layers_per_block: int | None,
                 name: str) -> dict[str, dict[str, LoraLayer]]:
    from diffusers.loaders.lora_conversion_utils import (
        _convert_non_diffusers_lora_to_diffusers,
        _maybe_map_sgm_blocks_to_diffusers,
    )

    # The converters rename keys and drop the alphas into names of their own; each tensor
    # object keeps its identity through them, so it leads back to its kohya layer and alpha
    alphas: dict[str, float] = {}
    owner: dict[int, str] = {}
    for k, v in state_dict.items():
        layer, _, rest = k.partition(".")
        if rest == "alpha":
            alphas[layer] = float(v.float().reshape(-1)[0])
        else:
            owner[id(v)] = layer
    sd = dict(state_dict)
    try:
        if layers_per_block is not None:
            sd = _maybe_map_sgm_blocks_to_diffusers(
                sd, types.SimpleNamespace(layers_per_block=layers_per_block))
        converted, _ = _convert_non_diffusers_lora_to_diffusers(sd)
    except (ValueError, KeyError, IndexError) as exc:
        raise LoraError(f"{name}: diffusers cannot convert its kohya keys ({exc})") from exc
    return _group(converted, lambda t: alphas.get(owner.get(id(t), "")), False, name)


def _parse_diffusers(state_dict: dict[str, torch.Tensor], metadata: dict[str, str],
                     name: str) -> dict[str, dict[str, LoraLayer]]:
    configs: dict[str, dict[str, Any]] = {}
    raw = metadata.get(METADATA_KEY)
    if raw:
        try:
            flat = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise LoraError(f"{name}: its {METADATA_KEY} metadata is not JSON ({exc})") from exc
        if isinstance(flat, dict):
            for comp in (UNET, *TEXT_ENCODERS):
                configs[comp] = {k[len(comp) + 1:]: v for k, v in flat.items()
                                 if k.startswith(comp + ".")}
    for comp, cfg in configs.items():
        if cfg.get("use_dora"):
            raise LoraError(f"{name} is a DoRA file ({comp}.use_dora), which Loom does not apply")
    sd: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.startswith("base_model.model."):  # a PEFT adapter saved from the bare UNet
            k = "unet." + k[len("base_model.model."):]
        elif not k.startswith(tuple(c + "." for c in (UNET, *TEXT_ENCODERS))):
            k = "unet." + k  # diffusers' older attention-processor files: the UNet's
        sd[k] = v
    module_of: dict[int, tuple[str, str]] = {}

    def alpha(t: torch.Tensor) -> float | None:
        comp, module = module_of[id(t)]
        cfg = configs.get(comp) or {}
        for pattern, value in (cfg.get("alpha_pattern") or {}).items():
            try:
                if re.match(rf"(.*\.)?({pattern})$", module):  # PEFT's pattern rule
                    return float(value)
            except re.error as exc:
                raise LoraError(f"{name}: alpha_pattern {pattern!r} in its {METADATA_KEY} is "
                                f"not a valid pattern ({exc})") from exc
        value = cfg.get("lora_alpha")
        return None if value is None else float(value)

    layers = _group(sd, None, False, name, module_of)
    for comp, mods in layers.items():
        cfg = configs.get(comp) or {}
        for module, layer in list(mods.items()):
            mods[module] = dataclasses.replace(layer, alpha=alpha(layer.down),
                                               rslora=bool(cfg.get("use_rslora")))
    return layers


def _group(converted: dict[str, torch.Tensor], alpha_of, rslora: bool, name: str,
           module_of: dict[int, tuple[str, str]] | None = None
           ) -> dict[str, dict[str, LoraLayer]]:
    """diffusers-named keys ("unet.<module>....", "text_encoder.<module>....") into layers,
    through diffusers' converters to PEFT's `<module>.lora_A.weight` / `.lora_B.weight`."""
    from diffusers.utils.state_dict_utils import (
        DIFFUSERS_OLD_TO_PEFT,
        DIFFUSERS_TO_PEFT,
        convert_state_dict,
        convert_unet_state_dict_to_peft,
    )

    by_comp: dict[str, dict[str, torch.Tensor]] = {c: {} for c in (UNET, *TEXT_ENCODERS)}
    for k, v in converted.items():
        comp, _, rest = k.partition(".")
        if comp not in by_comp:
            raise LoraError(f"{name}: key {k!r} belongs to no UNet or text encoder")
        by_comp[comp][rest] = v
    layers: dict[str, dict[str, LoraLayer]] = {}
    for comp, sd in by_comp.items():
        if comp == UNET:
            sd = convert_unet_state_dict_to_peft(sd)
        else:  # both spellings diffusers uses for text encoders, then PEFT's as they are
            sd = convert_state_dict(convert_state_dict(sd, DIFFUSERS_OLD_TO_PEFT),
                                    DIFFUSERS_TO_PEFT)
        mods: dict[str, LoraLayer] = {}
        for k, v in sd.items():
            if ".lora_A." not in k:
                if ".lora_B." not in k:
                    raise LoraError(f"{name}: cannot tell what {comp} key {k!r} is")
                continue
            module = k.split(".lora_A.", 1)[0]
            up = sd.get(k.replace(".lora_A.", ".lora_B."))
            if up is None:
                raise LoraError(f"{name}: {comp} layer {module} has a down (A) matrix but no up "
                                "(B) matrix")
            if module_of is not None:
                module_of[id(v)] = (comp, module)
            mods[module] = LoraLayer(v, up, alpha_of(v) if alpha_of else None, rslora)
        n_up = sum(".lora_B." in k for k in sd)
        if n_up != len(mods):
            raise LoraError(f"{name}: {comp} has {n_up} up (B) matrices for {len(mods)} down (A)")
        if mods:
            layers[comp] = mods
    return layers


def read_lora(path: Path, identity: str | None = None,
              layers_per_block: int | None = None) -> LoraFile:
    path = Path(path)
    sd, metadata = read_state_dict(path)
    fmt, layers = parse_lora(sd, metadata, layers_per_block, path.name)
    return LoraFile(str(path), identity or file_identity(path), fmt, layers, len(sd))


def lora_file(path: Path | str, identity: str, layers_per_block: int | None,
              models: ModelManager | None = None) -> LoraFile:
    """The parsed file, kept by the model manager (its tensors count against the budget)."""
    models = manager() if models is None else models

    def load() -> LoraFile:
        now = file_identity(Path(path))
        if now != identity:
            raise LoraError(f"{Path(path).name} changed since it was loaded; run the workflow "
                            "again to use the new file")
        return read_lora(Path(path), identity, layers_per_block)

    return models.get(("lora_file", identity, layers_per_block), load,
                      size=lambda f: f.nbytes)


# ---- matching and merging ------------------------------------------------------------------


def _weighted_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


def _find(name: str, modules: dict[str, torch.nn.Module]) -> str | None:
    for cand in (name, name.removeprefix("text_model."), "text_model." + name):
        if cand in modules:
            return cand
    return None


def match_layers(layers: dict[str, LoraLayer], model: torch.nn.Module, what: str,
                 name: str = "the LoRA") -> tuple[dict[str, LoraLayer], list[str]]:
    """The layers that have a module in `model` ({module name in the model: layer}) and the
    names of those that do not; a layer whose shape does not fit its module is an error."""
    modules = _weighted_modules(model)
    matched: dict[str, LoraLayer] = {}
    missing: list[str] = []
    for module, layer in layers.items():
        target = _find(module, modules)
        if target is None:
            missing.append(module)
            continue
        weight = modules[target].weight
        if not layer.fits(weight):
            raise LoraError(
                f"{name}: its {what} layer {module} (update {tuple(layer.up.shape[:2])} x "
                f"{tuple(layer.down.shape)}) does not fit the model's weight "
                f"{tuple(weight.shape)}: the LoRA was made for another model family")
        matched[target] = layer
    return matched, missing


def patched_copy(base: torch.nn.Module,
                 updates: Sequence[tuple[dict[str, LoraLayer], float]]) -> torch.nn.Module:
    """A copy of `base` with W + sum(strength * scale * up @ down) in the matched modules.
    The other weights are the base's tensors (shared storage, never written); `base` itself is
    not changed."""
    by_module: dict[str, list[tuple[LoraLayer, float]]] = {}
    for layers, strength in updates:
        for module, layer in layers.items():
            by_module.setdefault(module, []).append((layer, float(strength)))
    # deepcopy with every parameter and buffer mapped to an alias of the base's tensor: the
    # module tree is copied, the weights are not
    memo: dict[int, Any] = {}
    for p in base.parameters():
        memo[id(p)] = torch.nn.Parameter(p.detach(), requires_grad=p.requires_grad)
    for b in base.buffers():
        memo[id(b)] = b.detach()
    patched = copy.deepcopy(base, memo)
    with torch.no_grad():
        for module, items in by_module.items():
            weight = base.get_submodule(module).weight
            flat = weight.detach().reshape(weight.shape[0], -1).float()
            # the first update out of place (a new tensor, never the base's own), the others
            # into it: W is read once and the result written once
            new = torch.addmm(flat, *items[0][0].factors(weight.device, items[0][1]))
            for layer, strength in items[1:]:
                new.addmm_(*layer.factors(weight.device, strength))
            patched.get_submodule(module).weight = torch.nn.Parameter(
                new.reshape(weight.shape).to(weight.dtype), requires_grad=weight.requires_grad)
    return patched


# ---- patched models as model-manager entries -----------------------------------------------


@dataclass(frozen=True)
class LoraPatch:
    """One LoRA applied to one component: the file, its identity and the strength."""

    path: str
    identity: str
    strength: float
    layers_per_block: int | None = None

    @property
    def key(self) -> tuple[Hashable, ...]:
        return (self.identity, self.layers_per_block, self.strength)


def text_encoder_names(family: str, count: int) -> tuple[str, ...]:
    """Which of diffusers' text encoder names each of a ClipBundle's encoders has (the SDXL
    refiner's one encoder is SDXL's second, OpenCLIP bigG)."""
    if family == "sdxl_refiner" and count == 1:
        return ("text_encoder_2",)
    return TEXT_ENCODERS[:count]


class PatchedHandle(ModelHandle):
    """A handle to a base component with LoRA patches merged in, built on first borrow (and
    again after the manager evicted it) from the base handle and the LoRA files."""

    def __init__(self, base: ModelHandle, component: str, patches: tuple[LoraPatch, ...],
                 names: tuple[str, ...] = ()):
        self.base = base
        self.component = component
        self.patches = patches
        self.names = names
        key = ("lora", component, base.key, base.index, names, tuple(p.key for p in patches))
        super().__init__(base.models, key, self._build)

    def _updates(self, model: torch.nn.Module, comp: str) -> list[tuple[dict, float]]:
        out = []
        for p in self.patches:
            f = lora_file(p.path, p.identity, p.layers_per_block, self.models)
            matched, _ = match_layers(f.layers.get(comp, {}), model, comp, Path(p.path).name)
            if matched:
                out.append((matched, p.strength))
        return out

    def _build(self) -> Any:
        value = self.base.get()
        if self.component == UNET:
            return patched_copy(value, self._updates(value, UNET))
        encoders = list(value)
        out = []
        for comp, encoder in zip(self.names, encoders):
            updates = self._updates(encoder, comp)
            out.append(patched_copy(encoder, updates) if updates else encoder)
        return out

    def __repr__(self) -> str:
        shown = ", ".join(f"{Path(p.path).name}@{p.strength:g}" for p in self.patches)
        return f"PatchedHandle({self.base!r} + [{shown}])"


_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _as_handle(ref: Any, models: ModelManager) -> ModelHandle:
    """A bundle field as a handle: a handle as it is; weights a bundle holds directly (built by
    hand) behind a handle keyed by a token unique to those module objects."""
    if isinstance(ref, ModelHandle):
        return ref
    objs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
    token = tuple(_TOKENS.setdefault(o, uuid.uuid4().hex) for o in objs)
    return ModelHandle(models, ("unmanaged", token), lambda: ref)


def split(ref: Any, models: ModelManager) -> tuple[ModelHandle, tuple[LoraPatch, ...]]:
    """(base handle, patches already applied) of a bundle field."""
    if isinstance(ref, PatchedHandle):
        return ref.base, ref.patches
    return _as_handle(ref, models), ()


# ---- the node's work ------------------------------------------------------------------------


@dataclass
class LoraReport:
    format: str
    layers: int
    matched: dict[str, int]
    unmatched: list[str]

    def as_ui(self) -> dict[str, Any]:
        out: dict[str, Any] = {"lora_format": self.format,
                               "lora_layers": dict(self.matched)}
        if self.unmatched:
            out["lora_unmatched"] = self.unmatched[:10]
        return out


def apply_lora(model: Any, clip: Any, path: Path, strength_model: float,
               strength_clip: float, models: ModelManager | None = None
               ) -> tuple[Any, Any, LoraReport]:
    """Load LoRA: the MODEL and CLIP bundles with the LoRA at `path` added to their patches
    (the bundle itself when its strength is 0 or the file has no layer for it)."""
    models = manager() if models is None else models
    path = Path(path)
    identity = file_identity(path)
    unet = model.unet
    lpb = getattr(unet.config, "layers_per_block", None)
    lpb = lpb if isinstance(lpb, int) and not isinstance(lpb, bool) else None
    f = lora_file(path, identity, lpb, models)

    unet_layers, missing = match_layers(f.layers.get(UNET, {}), unet, "UNet", path.name)
    matched = {UNET: len(unet_layers)}
    unmatched = [f"unet.{m}" for m in missing]
    encoders = clip.text_encoders if clip is not None else []
    names = text_encoder_names(clip.family, len(encoders)) if clip is not None else ()
    for comp in TEXT_ENCODERS:
        layers = f.layers.get(comp, {})
        if comp in names:
            te_layers, missing = match_layers(layers, encoders[names.index(comp)], comp,
                                              path.name)
            matched[comp] = len(te_layers)
            unmatched += [f"{comp}.{m}" for m in missing]
        else:
            unmatched += [f"{comp}.{m}" for m in layers]
    report = LoraReport(f.format, f.n_layers, matched, unmatched)
    if not sum(matched.values()):
        family = getattr(model, "family", "this")
        shown = ", ".join(unmatched[:3])
        raise LoraError(
            f"{path.name}: none of its {f.n_layers} LoRA layers ({f.n_tensors} tensors, "
            f"{f.format} format) matches a layer of this {family} model's UNet or text "
            f"encoders (matched 0 of {f.n_layers}; e.g. {shown}); it was probably made for "
            "another model family")

    new_model = model
    if strength_model != 0 and unet_layers:
        base, patches = split(model.unet_ref, models)
        patch = LoraPatch(str(path), identity, float(strength_model), lpb)
        ref = PatchedHandle(base, UNET, (*patches, patch))
        ref.get()  # build now: the time and any error belong to this node
        new_model = dataclasses.replace(model, unet_ref=ref)
    new_clip = clip
    if clip is not None and strength_clip != 0 and any(matched.get(c) for c in names):
        base, patches = split(clip.text_encoders_ref, models)
        patch = LoraPatch(str(path), identity, float(strength_clip), lpb)
        ref = PatchedHandle(base, "clip", (*patches, patch), names)
        ref.get()
        new_clip = dataclasses.replace(clip, text_encoders_ref=ref)
    return new_model, new_clip, report
