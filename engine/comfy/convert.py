"""ComfyUI nodes -> Loom nodes: a ComfyGraph (engine.comfy.read) becomes a Loom workflow
document, with a report of what was mapped, what was not (kept as placeholders) and what is
approximated.

Most ComfyUI nodes map to one Loom node. Some carry values Loom keeps elsewhere and make no node
of their own: EmptyLatentImage (its size goes to the Latent Noise of the sampler it feeds),
CLIPSetLastLayer (clip_skip of the text encoders after it), SetLatentNoiseMask (the Sampler's
mask), KSamplerSelect / BasicScheduler / RandomNoise / CFGGuider (the Scheduler, Latent Noise and
CFG Combine of the custom sampler they feed), ControlNetApply(Advanced) (an Apply ControlNet
between the sampler's UNet Step and CFG Combine). A KSampler becomes Loom's decomposed sampling:
Latent Noise, Scheduler, UNet Step, CFG Combine and Sampler.

A node that does not map (an unknown type, an input Loom cannot take) becomes a placeholder:
a node of type `comfyui.<ClassName>` keeping its constant values (and the raw widget values in
its `ui.comfy`), linked where its inputs came from mapped nodes. Validation names it; nothing is
dropped silently.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from engine.comfy.read import ComfyGraph, ComfyNode
from engine.comfy.samplers import STOCHASTIC, loom_scheduler
from engine.registry import PLACEHOLDER_PREFIX

_MISSING: Any = object()
INT64_MAX = 2**63 - 1


class Unmappable(Exception):
    """This ComfyUI node cannot become Loom nodes (the message says why)."""


# values on ComfyUI outputs ------------------------------------------------------------------


@dataclass(frozen=True)
class Control:
    """A ControlNet a conditioning carries (ControlNetApply / ControlNetApplyAdvanced)."""

    net: Port
    image: Port
    strength: float
    start: float
    end: float
    positive_only: bool
    cid: str


@dataclass(frozen=True)
class InpaintLatent:
    """VAEEncodeForInpaint's LATENT: made into Loom nodes by the sampler that takes it."""

    vae: Port
    pixels: Port
    mask: Port
    grow: int
    cid: str
    size: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Port:
    """A Loom output, with what the importer knows about its value."""

    node: str
    output: str
    type: str
    size: tuple[int, int, int] | None = None  # LATENT / IMAGE / MASK: pixel width, height, batch
    clip_skip: int | None = None  # CLIP after CLIPSetLastLayer
    ckpt: str | None = None  # MODEL: the checkpoint file name it was loaded from
    controls: tuple[Control, ...] = ()  # CONDITIONING: ControlNets applied to it
    mask: Port | None = None  # LATENT: SetLatentNoiseMask's mask
    value: Any = _MISSING  # a primitive node's constant value
    placeholder: bool = False

    def link(self) -> dict[str, str]:
        return {"node": self.node, "output": self.output}


@dataclass(frozen=True)
class EmptyLatent:
    width: int
    height: int
    batch: int
    cid: str


@dataclass(frozen=True)
class SamplerChoice:
    name: str
    cid: str


@dataclass(frozen=True)
class Sigmas:
    model: Port
    scheduler: str
    steps: int
    denoise: float
    cid: str


@dataclass(frozen=True)
class NoiseSource:
    seed: Any  # int, a Port (primitive), or None (DisableNoise)
    cid: str


@dataclass(frozen=True)
class Guider:
    model: Port
    positive: Port
    negative: Port | None
    cfg: float
    cid: str


@dataclass(frozen=True)
class Unavailable:
    reason: str


# options and report ---------------------------------------------------------------------------


@dataclass
class ImportOptions:
    comfy_root: str | None = None
    """ComfyUI's folder: checkpoints in models/checkpoints, LoRAs in models/loras, ControlNets
    in models/controlnet, images in input/. Without it, file names stay as ComfyUI wrote them
    (relative to the workflow's folder in Loom)."""
    base_dir: str | None = None
    """The folder relative image names resolve against when the importer reads an image's
    size (the new workflow's folder; default the current one)."""
    inpaint_model: str = "auto"
    """For VAEEncodeForInpaint: "yes" (the checkpoint is an inpainting model: Loom's Inpaint
    Conditioning), "no" (an ordinary model: the Sampler's mask), "auto" (by the checkpoint's
    name: "inpaint" in it)."""

    def path(self, kind: str, name: str) -> str:
        name = name.replace("\\", "/")
        if not self.comfy_root:
            return name
        folder = {"checkpoints": "models/checkpoints", "loras": "models/loras",
                  "controlnet": "models/controlnet", "vae": "models/vae",
                  "input": "input"}[kind]
        return str(Path(self.comfy_root) / folder / name)

    def local(self, path: str) -> str:
        """`path` as the importer finds the file now (relative to base_dir)."""
        if self.base_dir and not Path(path).is_absolute():
            return str(Path(self.base_dir) / path)
        return path

    def image_path(self, name: str) -> str:
        # "name.png [output]": a file of ComfyUI's output or temp folder
        m = re.fullmatch(r"(.*?) \[(input|output|temp)\]", name)
        if m is None:
            return self.path("input", name)
        name, where = m.group(1), m.group(2)
        if not self.comfy_root:
            return name.replace("\\", "/")
        return str(Path(self.comfy_root) / where / name.replace("\\", "/"))


@dataclass
class ImportReport:
    format: str
    mapped: list[tuple[str, str, list[str]]] = field(default_factory=list)
    """(ComfyUI id, type, the Loom node ids made for it; none when folded into others)."""
    not_mapped: list[tuple[str, str, str]] = field(default_factory=list)
    """(ComfyUI id, type, why): each is a placeholder node `comfy_<id>` in the graph."""
    notes: list[str] = field(default_factory=list)
    """Approximations and differences, each naming its node."""

    def lines(self) -> list[str]:
        out = [f"ComfyUI workflow ({self.format} format): {len(self.mapped)} node(s) mapped, "
               f"{len(self.not_mapped)} not mapped"]
        for cid, type_, why in self.not_mapped:
            out.append(f"not mapped: node {cid} ({type_}): {why} -- kept as placeholder "
                       f"'comfy_{_safe(cid)}'")
        out.extend(f"note: {n}" for n in self.notes)
        return out

    def to_json(self) -> dict[str, Any]:
        return {"format": self.format,
                "not_mapped": [{"id": c, "type": t, "reason": r} for c, t, r in self.not_mapped],
                "notes": list(self.notes)}


def _safe(cid: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]", "_", str(cid))


# the converter --------------------------------------------------------------------------------

Mapper = Callable[["Converter", ComfyNode], list[Any]]
MAPPERS: dict[str, tuple[Mapper, tuple[str, ...]]] = {}
"""ComfyUI type -> (mapping function, the Loom node types it needs)."""


def maps(*comfy_types: str, needs: tuple[str, ...] = ()) -> Callable[[Mapper], Mapper]:
    def register(fn: Mapper) -> Mapper:
        for t in comfy_types:
            MAPPERS[t] = (fn, needs)
        return fn
    return register


NOT_IN_LOOM: dict[str, str] = {
    "ConditioningSetArea": "Loom's conditioning has no areas (a prompt for one region of the "
                           "image)",
    "ConditioningSetAreaPercentage": "Loom's conditioning has no areas",
    "ConditioningCombine": "Loom's CFG Combine takes one positive conditioning",
    "ConditioningConcat": "Loom has no conditioning concatenation",
    "ConditioningAverage": "Loom has no conditioning averaging",
    "UpscaleModelLoader": "Loom has no ESRGAN-style upscale models (its upscalers are the SD x4 "
                          "and latent x2 models, and Resample Image)",
    "ImageUpscaleWithModel": "Loom has no ESRGAN-style upscale models",
    "LoraLoaderModelOnly": "Loom's Load LoRA applies to a model and its CLIP together",
    "CLIPTextEncodeSDXL": "not mapped yet (Text Encoder + SDXL Conditioning would express it)",
    "CLIPTextEncodeSDXLRefiner": "not mapped yet (Text Encoder + SDXL Conditioning would "
                                 "express it)",
    "CLIPLoader": "Loom takes the text encoders from a checkpoint",
    "UNETLoader": "Loom loads whole checkpoints",
    "KarrasScheduler": "maps only as the sigmas of a custom sampler fed by BasicScheduler",
    "SplitSigmas": "Loom's Scheduler start/end split the steps instead",
}
"""Why some well-known ComfyUI nodes have no mapping (the placeholder says so)."""

SAMPLING_NODES = ("latents.noise", "sampling.scheduler", "sampling.unet_step",
                  "sampling.cfg_combine", "sampling.sampler")


class Converter:
    def __init__(self, graph: ComfyGraph, registry: Any = None,
                 options: ImportOptions | None = None):
        self.g = graph
        self.reg = registry
        self.opts = options or ImportOptions()
        self.nodes: dict[str, dict[str, Any]] = {}
        self.owner: dict[str, str] = {}
        self.report = ImportReport(graph.format, notes=list(graph.notes))
        self._out: dict[str, list[Any]] = {}
        self._busy: set[str] = set()
        self._stack: list[str] = []
        self._shared: dict[tuple[Any, ...], str] = {}
        self._noted: set[str] = set()

    # building Loom nodes ---------------------------------------------------------------------
    def has(self, *types: str) -> bool:
        return self.reg is None or all(self.reg.get(t) is not None for t in types)

    def add(self, base: str, type_id: str, inputs: dict[str, Any],
            cn: ComfyNode | None = None, offset: tuple[float, float] = (0, 0)) -> str:
        nid = _safe(base)
        if nid[0].isdigit():
            nid = "n_" + nid
        i = 2
        while nid in self.nodes:
            nid = f"{_safe(base)}_{i}"
            i += 1
        entry: dict[str, Any] = {"type": type_id}
        spec = self.reg.get(type_id) if self.reg is not None else None
        if spec is not None:
            entry["version"] = spec.version
        for k, v in inputs.items():
            if not (v is None or isinstance(v, (Port, str, int, float, bool))):
                raise Unmappable(f"'{k}' is {_short(v)}, not a number, text or true/false")
        entry["inputs"] = {k: (v.link() if isinstance(v, Port) else v)
                           for k, v in inputs.items() if v is not None}
        ui: dict[str, Any] = {}
        if cn is not None and cn.pos is not None:
            ui["pos"] = [round(cn.pos[0] + offset[0], 1), round(cn.pos[1] + offset[1], 1)]
        if cn is not None and cn.color and offset == (0, 0):
            ui["color"] = cn.color
        entry["ui"] = ui
        self.nodes[nid] = entry
        self.owner[nid] = self._stack[-1] if self._stack else ""
        return nid

    def shared(self, key: tuple[Any, ...], make: Callable[[], str]) -> str:
        nid = self._shared.get(key)
        if nid is None or nid not in self.nodes:
            nid = self._shared[key] = make()
        return nid

    def note(self, cn: ComfyNode | None, text: str) -> None:
        line = f"node {cn.id} ({cn.type}): {text}" if cn is not None else text
        if line not in self._noted:
            self._noted.add(line)
            self.report.notes.append(line)

    # reading ComfyUI values -----------------------------------------------------------------
    def outputs(self, cid: str) -> list[Any]:
        if cid in self._out:
            return self._out[cid]
        if cid in self._busy:
            raise Unmappable(f"node {cid} is part of a cycle")
        cn = self.g.nodes[cid]
        self._busy.add(cid)
        self._stack.append(cid)
        try:
            mapper = MAPPERS.get(cn.type)
            if mapper is None:
                values = self.placeholder(cn, NOT_IN_LOOM.get(cn.type, "no Loom equivalent"))
            elif not self.has(*mapper[1]):
                missing = ", ".join(t for t in mapper[1] if self.reg.get(t) is None)
                values = self.placeholder(cn, f"this Loom lacks the node types it maps to "
                                              f"({missing})")
            else:
                try:
                    values = mapper[0](self, cn)
                    made = [n for n, o in self.owner.items() if o == cid]
                    self.report.mapped.append((cid, cn.type, made))
                except Unmappable as exc:
                    self._drop(cid)
                    values = self.placeholder(cn, str(exc))
                except (TypeError, ValueError, AttributeError, KeyError, IndexError,
                        OverflowError, ZeroDivisionError) as exc:  # odd values in the file
                    self._drop(cid)
                    values = self.placeholder(cn, f"cannot read its values "
                                                  f"({type(exc).__name__}: {exc})")
        finally:
            self._stack.pop()
            self._busy.discard(cid)
        self._out[cid] = values
        return values

    def _drop(self, cid: str) -> None:
        for nid in [n for n, o in self.owner.items() if o == cid]:
            self.nodes.pop(nid, None)
            self.owner.pop(nid, None)

    def link(self, cn: ComfyNode, name: str, required: bool = True) -> Any:
        src = cn.links.get(name)
        if src is None:
            if required:
                raise Unmappable(f"input '{name}' is not connected")
            return None
        sid, slot = src
        if sid not in self.g.nodes:
            raise Unmappable(f"input '{name}' comes from node {sid}, which is not in the file")
        values = self.outputs(sid)
        if not 0 <= slot < len(values):
            raise Unmappable(f"input '{name}': node {sid} has no output {slot}")
        value = values[slot]
        if isinstance(value, Unavailable):
            raise Unmappable(f"input '{name}': {value.reason}")
        return value

    def port(self, cn: ComfyNode, name: str, required: bool = True) -> Port | None:
        value = self.link(cn, name, required)
        if value is None or isinstance(value, Port):
            return value
        raise Unmappable(f"input '{name}' gets {_describe(value)}, which Loom cannot take there")

    def const(self, cn: ComfyNode, name: str, default: Any = _MISSING) -> Any:
        if name in cn.links:
            value = self.link(cn, name)
            if isinstance(value, Port) and value.value is not _MISSING:
                return value.value
            raise Unmappable(f"input '{name}' is fed by a node whose value the importer cannot "
                             "know")
        if name in cn.values:
            return cn.values[name]
        if default is _MISSING:
            raise Unmappable(f"no value for '{name}'")
        return default

    def value(self, cn: ComfyNode, name: str, default: Any = _MISSING) -> Any:
        """A constant, or a Port when a primitive node feeds it (linked through in Loom)."""
        if name in cn.links:
            value = self.link(cn, name)
            if isinstance(value, Port):
                return value
            raise Unmappable(f"input '{name}' gets {_describe(value)}")
        return self.const(cn, name, default)

    def number(self, cn: ComfyNode, name: str, default: Any = _MISSING, integer: bool = False,
               lo: float | None = None, hi: float | None = None) -> Any:
        v = self.const(cn, name, default)
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                raise Unmappable(f"'{name}' is {v!r}, not a number") from None
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise Unmappable(f"'{name}' is {v!r}, not a number")
        if integer:
            if v != int(v):
                raise Unmappable(f"'{name}' is {v!r}, not a whole number")
            v = int(v)
        if lo is not None and v < lo:
            self.note(cn, f"{name} {v} is below Loom's minimum {lo}: imported as {lo}")
            v = type(v)(lo)
        if hi is not None and v > hi:
            self.note(cn, f"{name} {v} is above Loom's maximum {hi}: imported as {hi}")
            v = type(v)(hi)
        return v

    def text(self, cn: ComfyNode, name: str, default: Any = _MISSING) -> str:
        v = self.const(cn, name, default)
        if not isinstance(v, str):
            raise Unmappable(f"'{name}' is {v!r}, not text")
        return v

    # placeholders ------------------------------------------------------------------------------
    def placeholder(self, cn: ComfyNode, why: str) -> list[Any]:
        inputs: dict[str, Any] = {}
        for name, value in cn.values.items():
            if value is None or isinstance(value, (str, int, float, bool)):
                inputs[name] = value
        for name in cn.links:
            try:
                value = self.link(cn, name)
            except Unmappable:
                continue
            if isinstance(value, Port):
                inputs[name] = value
        nid = self.add(f"comfy_{cn.id}", PLACEHOLDER_PREFIX + cn.type, inputs, cn)
        comfy: dict[str, Any] = {"id": cn.id, "type": cn.type, "reason": why}
        if cn.widgets is not None:
            comfy["widgets_values"] = cn.widgets
        other = {k: v for k, v in cn.values.items()
                 if not (v is None or isinstance(v, (str, int, float, bool)))}
        if other:
            comfy["values"] = other
        if cn.title:
            comfy["title"] = cn.title
        self.nodes[nid]["ui"]["comfy"] = comfy
        self.report.not_mapped.append((cn.id, cn.type, why))
        outs = cn.outputs or [(f"output_{i}", "") for i in range(8)]
        return [Port(nid, name or f"output_{i}", type_ or "*", placeholder=True)
                for i, (name, type_) in enumerate(outs)]

    # the whole graph ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        for cid in self.g.nodes:
            self.outputs(cid)
        ui: dict[str, Any] = {}
        groups = [dict(g) for g in self.g.groups]
        if groups:
            ui["groups"] = groups
        if self.g.comments:
            ui["comfy_notes"] = self.g.comments
            for c in self.g.comments:
                self.report.notes.append(f"node {c['id']} (Note): a comment; its text is kept in "
                                         "the workflow's ui.comfy_notes (Loom has no note node)")
        ui["comfy_import"] = self.report.to_json()
        if any("pos" not in n["ui"] for n in self.nodes.values()):
            layout(self.nodes)
        return {"schema_version": 1, "nodes": self.nodes, "ui": ui}


def _short(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 40 else r[:37] + "..."


def _describe(value: Any) -> str:
    names = {EmptyLatent: "an empty latent (EmptyLatentImage)",
             SamplerChoice: "a SAMPLER", Sigmas: "SIGMAS", NoiseSource: "a NOISE",
             Guider: "a GUIDER", InpaintLatent: "an inpainting latent"}
    return names.get(type(value), type(value).__name__)


def layout(nodes: dict[str, dict[str, Any]]) -> None:
    """Positions for nodes without one (the API format has none): a column per depth in the
    data flow, nodes in file order within a column."""
    deps = {nid: [v["node"] for v in n["inputs"].values()
                  if isinstance(v, dict) and v.get("node") in nodes]
            for nid, n in nodes.items()}
    depth: dict[str, int] = {}

    def d(nid: str, seen: frozenset[str] = frozenset()) -> int:
        if nid in depth:
            return depth[nid]
        if nid in seen:
            return 0
        depth[nid] = r = 1 + max((d(s, seen | {nid}) for s in deps[nid]), default=-1)
        return r

    rows: dict[int, int] = {}
    for nid, n in nodes.items():
        col = d(nid)
        row = rows.get(col, 0)
        rows[col] = row + 1
        n["ui"].setdefault("pos", [col * 300.0, row * 240.0])


# node mappings ----------------------------------------------------------------------------------


@maps("CheckpointLoaderSimple", "CheckpointLoader", needs=("loaders.checkpoint",))
def _checkpoint(c: Converter, cn: ComfyNode) -> list[Any]:
    name = c.text(cn, "ckpt_name")
    if cn.type == "CheckpointLoader":
        c.note(cn, "its config_name is not used: Loom reads the model's configuration itself")
    nid = c.add(f"checkpoint_{cn.id}", "loaders.checkpoint",
                {"path": c.opts.path("checkpoints", name)}, cn)
    return [Port(nid, "model", "MODEL", ckpt=name), Port(nid, "clip", "CLIP"),
            Port(nid, "vae", "VAE")]


@maps("CLIPSetLastLayer")
def _clip_last_layer(c: Converter, cn: ComfyNode) -> list[Any]:
    clip = c.port(cn, "clip")
    layer = c.number(cn, "stop_at_clip_layer", -1, integer=True)
    if layer >= 0:
        raise Unmappable(f"stop_at_clip_layer {layer} must be negative")
    skip = -layer
    if skip > 12:
        c.note(cn, f"stop_at_clip_layer {layer}: Loom's clip_skip goes to 12; imported as 12")
        skip = 12
    return [replace(clip, clip_skip=skip)]


def _weighted(text: str) -> bool:
    return re.search(r"\([^()]*:\s*[-+]?[0-9.]+\s*\)", text) is not None


@maps("CLIPTextEncode", needs=("conditioning.text_encode",))
def _text_encode(c: Converter, cn: ComfyNode) -> list[Any]:
    clip = c.port(cn, "clip")
    text = c.value(cn, "text", "")
    if isinstance(text, str) and _weighted(text):
        c.note(cn, "the prompt has (word:weight) weights: Loom weighs them as A1111 does "
                   "(scale, then restore the mean), ComfyUI by moving the token away from the "
                   "empty prompt's; weighted prompts give different embeddings")
    inputs = {"clip": clip, "text": text, "clip_skip": clip.clip_skip or 1}
    nid = c.add(f"prompt_{cn.id}", "conditioning.text_encode", inputs, cn)
    return [Port(nid, "conditioning", "CONDITIONING")]


@maps("EmptyLatentImage")
def _empty_latent(c: Converter, cn: ComfyNode) -> list[Any]:
    w = c.number(cn, "width", 512, integer=True)
    h = c.number(cn, "height", 512, integer=True)
    b = c.number(cn, "batch_size", 1, integer=True, lo=1, hi=64)
    if w < 8 or h < 8:
        raise Unmappable(f"size {w}x{h} is below 8 pixels")
    if w % 8 or h % 8:
        c.note(cn, f"size {w}x{h}: latents are 1/8 of the image; imported as "
                   f"{w // 8 * 8}x{h // 8 * 8}, as ComfyUI makes it")
    return [EmptyLatent(w // 8 * 8, h // 8 * 8, b, cn.id)]


@maps("VAEDecode", "VAEDecodeTiled", needs=("latents.vae_decode",))
def _vae_decode(c: Converter, cn: ComfyNode) -> list[Any]:
    vae = c.port(cn, "vae")
    latent = c.link(cn, "samples")
    if not isinstance(latent, Port):
        raise Unmappable(f"its samples are {_describe(latent)}, which Loom does not decode")
    if cn.type == "VAEDecodeTiled":
        c.note(cn, "decoded whole: Loom's VAE Decode does not tile")
    nid = c.add(f"decode_{cn.id}", "latents.vae_decode", {"vae": vae, "latent": latent}, cn)
    return [Port(nid, "image", "IMAGE", size=latent.size)]


@maps("VAEEncode", needs=("latents.vae_encode",))
def _vae_encode(c: Converter, cn: ComfyNode) -> list[Any]:
    vae = c.port(cn, "vae")
    pixels = c.port(cn, "pixels")
    nid = c.add(f"encode_{cn.id}", "latents.vae_encode",
                {"vae": vae, "image": pixels, "mode": "mean"}, cn)
    c.note(cn, "encodes the posterior mean (mode 'mean'), as ComfyUI does; an image whose "
               "sides are not multiples of 8 is refused by Loom where ComfyUI crops it")
    return [Port(nid, "latent", "LATENT", size=_crop8(pixels.size))]


def _crop8(size: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
    return None if size is None else (size[0] // 8 * 8, size[1] // 8 * 8, size[2])


@maps("VAEEncodeForInpaint", needs=("latents.vae_encode", "inpaint.prepare"))
def _vae_encode_inpaint(c: Converter, cn: ComfyNode) -> list[Any]:
    vae = c.port(cn, "vae")
    pixels = c.port(cn, "pixels")
    mask = c.port(cn, "mask")
    grow = c.number(cn, "grow_mask_by", 6, integer=True)
    if grow > 0:
        c.note(cn, f"grow_mask_by {grow}: Loom has no mask dilation; the mask is used as drawn "
                   "(set grow_mask_by to 0 in ComfyUI for the same mask)")
    return [InpaintLatent(vae, pixels, mask, grow, cn.id, _crop8(pixels.size))]


@maps("SetLatentNoiseMask")
def _noise_mask(c: Converter, cn: ComfyNode) -> list[Any]:
    latent = c.link(cn, "samples")
    if not isinstance(latent, Port):
        raise Unmappable(f"its samples are {_describe(latent)}; Loom masks an image's latent")
    return [replace(latent, mask=c.port(cn, "mask"))]


def _prefix(c: Converter, cn: ComfyNode) -> Any:
    from engine.files import check_prefix

    prefix = c.value(cn, "filename_prefix", "ComfyUI")
    if isinstance(prefix, Port):
        return prefix
    clean = re.sub(r"[\\/:*?\"<>|\0]+", "_", str(prefix)).replace("..", "_").strip() \
        or "ComfyUI"
    if check_prefix(clean) is not None:
        clean = "ComfyUI"
    if clean != prefix:
        c.note(cn, f"filename_prefix {prefix!r}: Loom's prefix names no folders; imported as "
                   f"{clean!r}")
    return clean


@maps("SaveImage", needs=("image.save",))
def _save(c: Converter, cn: ComfyNode) -> list[Any]:
    c.add(f"save_{cn.id}", "image.save", {"images": c.port(cn, "images"),
                                          "prefix": _prefix(c, cn)}, cn)
    return []


@maps("PreviewImage", needs=("image.preview",))
def _preview(c: Converter, cn: ComfyNode) -> list[Any]:
    c.add(f"preview_{cn.id}", "image.preview", {"images": c.port(cn, "images")}, cn)
    return []


def image_size(path: str) -> tuple[int, int] | None:
    """(width, height) of an image file, from its header (None when it cannot be read)."""
    try:
        from PIL import Image

        with Image.open(path) as im:
            return int(im.width), int(im.height)
    except Exception:  # noqa: BLE001 - any unreadable file: the size is just unknown
        return None


@maps("LoadImage", needs=("image.load",))
def _load_image(c: Converter, cn: ComfyNode) -> list[Any]:
    path = c.opts.image_path(c.text(cn, "image"))
    nid = c.add(f"image_{cn.id}", "image.load", {"image": path}, cn)
    wh = image_size(c.opts.local(path))
    size = (wh[0], wh[1], 1) if wh else None
    return [Port(nid, "image", "IMAGE", size=size), Port(nid, "mask", "MASK", size=size)]


@maps("LoadImageMask", needs=("image.load_mask",))
def _load_mask(c: Converter, cn: ComfyNode) -> list[Any]:
    path = c.opts.image_path(c.text(cn, "image"))
    channel = c.text(cn, "channel", "alpha")
    if channel not in ("alpha", "red", "green", "blue"):
        raise Unmappable(f"channel {channel!r}")
    nid = c.add(f"mask_{cn.id}", "image.load_mask",
                {"image": path, "channel": channel, "invert": False}, cn)
    wh = image_size(c.opts.local(path))
    return [Port(nid, "mask", "MASK", size=(wh[0], wh[1], 1) if wh else None)]


LATENT_METHODS = ("nearest-exact", "bilinear", "area", "bicubic")


def _latent_method(c: Converter, cn: ComfyNode) -> str:
    method = c.text(cn, "upscale_method", "nearest-exact")
    if method == "bislerp":
        c.note(cn, "upscale_method 'bislerp' is not in Loom: imported as 'bilinear'")
        return "bilinear"
    if method not in LATENT_METHODS:
        raise Unmappable(f"upscale_method {method!r}")
    return method


def _resize_latent(c: Converter, cn: ComfyNode, latent: Any, scale: float, method: str,
                   size: tuple[int, int, int] | None) -> list[Any]:
    if isinstance(latent, EmptyLatent):
        if size is None:
            raise Unmappable("the size it makes is unknown")
        return [EmptyLatent(size[0], size[1], latent.batch, latent.cid)]
    if not isinstance(latent, Port):
        raise Unmappable(f"its samples are {_describe(latent)}")
    if not 0.125 <= scale <= 8.0:
        raise Unmappable(f"scale {scale:g} is outside Loom's Resize Latent range 0.125..8")
    if latent.mask is not None:
        c.note(cn, "the noise mask is dropped here, as ComfyUI's latent upscale drops it")
    nid = c.add(f"upscale_{cn.id}", "upscale.latent_resize",
                {"latent": latent, "scale": scale, "method": method}, cn)
    return [Port(nid, "latent", "LATENT", size=size)]


@maps("LatentUpscaleBy", needs=("upscale.latent_resize",))
def _latent_upscale_by(c: Converter, cn: ComfyNode) -> list[Any]:
    latent = c.link(cn, "samples")
    method = _latent_method(c, cn)
    scale = float(c.number(cn, "scale_by", 1.5))
    size = _size_of(latent)
    new = None
    if size is not None:  # ComfyUI: round(latent side * scale), as Loom's Resize Latent
        new = (round(size[0] // 8 * scale) * 8, round(size[1] // 8 * scale) * 8, size[2])
    return _resize_latent(c, cn, latent, scale, method, new)


@maps("LatentUpscale", needs=("upscale.latent_resize",))
def _latent_upscale(c: Converter, cn: ComfyNode) -> list[Any]:
    latent = c.link(cn, "samples")
    method = _latent_method(c, cn)
    w = c.number(cn, "width", 512, integer=True)
    h = c.number(cn, "height", 512, integer=True)
    crop = c.text(cn, "crop", "disabled")
    size = _size_of(latent)
    if isinstance(latent, EmptyLatent):
        if w == 0 or h == 0:
            raise Unmappable("a side of 0 (keep the aspect) needs the latent's size")
        return _resize_latent(c, cn, latent, 1.0, method, (w // 8 * 8, h // 8 * 8, latent.batch))
    if size is None:
        raise Unmappable(f"Loom's Resize Latent scales by a factor and the size of this latent "
                         f"is not known at import; use LatentUpscaleBy, or Resize Latent with "
                         f"the factor to {w}x{h}")
    lw, lh = size[0] // 8, size[1] // 8
    tw, th = w // 8, h // 8
    if tw == 0 and th == 0:
        raise Unmappable("width and height are both 0")
    sx = tw / lw if tw else th / lh
    sy = th / lh if th else sx
    tw, th = tw or round(lw * sy), th or round(lh * sx)
    if round(lw * sx) != tw or round(lh * sx) != th or abs(sx - sy) > 1e-9:
        raise Unmappable(f"{size[0]}x{size[1]} to {w}x{h} is not one factor on both sides, and "
                         "Loom's Resize Latent scales by one factor")
    if crop != "disabled":
        c.note(cn, f"crop {crop!r} does nothing at this size (the aspect stays)")
    return _resize_latent(c, cn, latent, sx, method, (tw * 8, th * 8, size[2]))


def _size_of(value: Any) -> tuple[int, int, int] | None:
    if isinstance(value, EmptyLatent):
        return value.width, value.height, value.batch
    if isinstance(value, (Port, InpaintLatent)):
        return value.size
    return None


IMAGE_METHODS = {"nearest-exact": "nearest", "bilinear": "bilinear", "area": "bilinear",
                 "bicubic": "bicubic", "lanczos": "lanczos"}


def _image_method(c: Converter, cn: ComfyNode) -> str:
    method = c.text(cn, "upscale_method", "nearest-exact")
    if method not in IMAGE_METHODS:
        raise Unmappable(f"upscale_method {method!r}")
    if method == "area":
        c.note(cn, "upscale_method 'area' is not in Loom's Resize Image: imported as 'bilinear'")
    c.note(cn, "Loom resizes images with Pillow's filters, ComfyUI with torch's (lanczos: "
               "Pillow in both), so pixels can differ slightly")
    return IMAGE_METHODS[method]


@maps("ImageScale", needs=("image.resize",))
def _image_scale(c: Converter, cn: ComfyNode) -> list[Any]:
    image = c.port(cn, "image")
    method = _image_method(c, cn)
    w = c.number(cn, "width", 512, integer=True)
    h = c.number(cn, "height", 512, integer=True)
    crop = c.text(cn, "crop", "disabled")
    size = image.size
    if w == 0 or h == 0:
        if size is None:
            raise Unmappable("a side of 0 (keep the aspect) needs the image's size, which is "
                             "not known at import")
        w = w or round(size[0] * h / size[1])
        h = h or round(size[1] * w / size[0])
    if crop != "disabled" and (size is None or abs(size[0] / size[1] - w / h) > 1e-6):
        raise Unmappable(f"crop {crop!r} (cut to the new aspect) is not in Loom's Resize Image")
    nid = c.add(f"resize_{cn.id}", "image.resize",
                {"image": image, "width": w, "height": h, "method": method}, cn)
    return [Port(nid, "image", "IMAGE", size=(w, h, size[2] if size else 1))]


@maps("ImageScaleBy", needs=("upscale.resample",))
def _image_scale_by(c: Converter, cn: ComfyNode) -> list[Any]:
    image = c.port(cn, "image")
    method = _image_method(c, cn)
    scale = float(c.number(cn, "scale_by", 1.0, lo=0.05, hi=16.0))
    nid = c.add(f"resample_{cn.id}", "upscale.resample",
                {"image": image, "scale": scale, "method": method}, cn)
    size = image.size
    new = (round(size[0] * scale), round(size[1] * scale), size[2]) if size else None
    return [Port(nid, "image", "IMAGE", size=new)]


@maps("LoraLoader", needs=("loaders.lora",))
def _lora(c: Converter, cn: ComfyNode) -> list[Any]:
    model = c.port(cn, "model")
    clip = c.port(cn, "clip")
    name = c.text(cn, "lora_name")
    nid = c.add(f"lora_{cn.id}", "loaders.lora", {
        "model": model, "clip": clip, "path": c.opts.path("loras", name),
        "strength_model": float(c.number(cn, "strength_model", 1.0, lo=-10.0, hi=10.0)),
        "strength_clip": float(c.number(cn, "strength_clip", 1.0, lo=-10.0, hi=10.0))}, cn)
    return [replace(model, node=nid, output="model"), replace(clip, node=nid, output="clip")]


@maps("VAELoader", needs=("loaders.vae",))
def _vae_loader(c: Converter, cn: ComfyNode) -> list[Any]:
    name = c.text(cn, "vae_name")
    if name in ("taesd", "taesdxl", "taesd3", "taef1", "pixel_space"):
        raise Unmappable(f"vae_name {name!r} is one of ComfyUI's built-in decoders, which Loom "
                         "does not have")
    nid = c.add(f"vae_{cn.id}", "loaders.vae", {"path": c.opts.path("vae", name)}, cn)
    return [Port(nid, "vae", "VAE")]


@maps("ControlNetLoader", needs=("loaders.controlnet",))
def _controlnet_loader(c: Converter, cn: ComfyNode) -> list[Any]:
    name = c.text(cn, "control_net_name")
    nid = c.add(f"controlnet_{cn.id}", "loaders.controlnet",
                {"path": c.opts.path("controlnet", name)}, cn)
    return [Port(nid, "control_net", "CONTROL_NET")]


def _control(c: Converter, cn: ComfyNode, positive_only: bool) -> Control:
    net = c.port(cn, "control_net")
    image = c.port(cn, "image")
    strength = float(c.number(cn, "strength", 1.0, lo=0.0, hi=10.0))
    start = float(c.number(cn, "start_percent", 0.0, lo=0.0, hi=1.0))
    end = float(c.number(cn, "end_percent", 1.0, lo=0.0, hi=1.0))
    if start >= end:
        raise Unmappable(f"start_percent {start} is not below end_percent {end}")
    if (start, end) != (0.0, 1.0):
        c.note(cn, "start/end_percent: ComfyUI counts them along the noise levels, Loom's "
                   "Apply ControlNet along the steps (as diffusers), so the steps it acts on "
                   "can differ by one")
    if "vae" in cn.links:
        c.note(cn, "its vae input is not needed by Loom")
    return Control(net, image, strength, start, end, positive_only, cn.id)


@maps("ControlNetApply", needs=("controlnet.apply",))
def _controlnet_apply(c: Converter, cn: ComfyNode) -> list[Any]:
    cond = c.port(cn, "conditioning")
    control = _control(c, cn, positive_only=True)
    return [replace(cond, controls=cond.controls + (control,))]


@maps("ControlNetApplyAdvanced", needs=("controlnet.apply",))
def _controlnet_apply_advanced(c: Converter, cn: ComfyNode) -> list[Any]:
    pos = c.port(cn, "positive")
    neg = c.port(cn, "negative")
    control = _control(c, cn, positive_only=False)
    return [replace(pos, controls=pos.controls + (control,)),
            replace(neg, controls=neg.controls + (control,))]


@maps("KSamplerSelect")
def _sampler_select(c: Converter, cn: ComfyNode) -> list[Any]:
    return [SamplerChoice(c.text(cn, "sampler_name", "euler"), cn.id)]


@maps("BasicScheduler")
def _basic_scheduler(c: Converter, cn: ComfyNode) -> list[Any]:
    return [Sigmas(c.port(cn, "model"), c.text(cn, "scheduler", "normal"),
                   c.number(cn, "steps", 20, integer=True),
                   float(c.number(cn, "denoise", 1.0)), cn.id)]


@maps("RandomNoise")
def _random_noise(c: Converter, cn: ComfyNode) -> list[Any]:
    return [NoiseSource(c.value(cn, "noise_seed", 0), cn.id)]


@maps("DisableNoise")
def _disable_noise(c: Converter, cn: ComfyNode) -> list[Any]:
    return [NoiseSource(None, cn.id)]


@maps("CFGGuider")
def _cfg_guider(c: Converter, cn: ComfyNode) -> list[Any]:
    return [Guider(c.port(cn, "model"), c.port(cn, "positive"), c.port(cn, "negative"),
                   c.value(cn, "cfg", 8.0), cn.id)]


@maps("BasicGuider")
def _basic_guider(c: Converter, cn: ComfyNode) -> list[Any]:
    return [Guider(c.port(cn, "model"), c.port(cn, "conditioning"), None, 1.0, cn.id)]


_PRIMITIVES = {"PrimitiveInt": ("primitive.int", "INT"),
               "PrimitiveFloat": ("primitive.float", "FLOAT"),
               "PrimitiveString": ("primitive.string", "STRING"),
               "PrimitiveStringMultiline": ("primitive.string", "STRING"),
               "PrimitiveBoolean": ("primitive.bool", "BOOLEAN")}


def _primitive(c: Converter, cn: ComfyNode) -> list[Any]:
    type_id, kind = _PRIMITIVES[cn.type]
    value = c.const(cn, "value")
    if kind == "INT" and isinstance(value, float) and value == int(value):
        value = int(value)
    nid = c.add(f"value_{cn.id}", type_id, {"value": value}, cn)
    return [Port(nid, "value", kind, value=value)]


for _t, (_loom, _kind) in _PRIMITIVES.items():
    maps(_t, needs=(_loom,))(_primitive)


# sampling -----------------------------------------------------------------------------------


def _steps_and_strength(steps: int, denoise: float) -> tuple[int, float]:
    """ComfyUI runs `steps` steps of a schedule of int(steps / denoise) steps (its last ones);
    Loom's Scheduler (diffusers' img2img rule) runs int(total * strength) of `total`. The same
    steps: total = int(steps / denoise), and strength rounded up at the 4th decimal so that
    int(total * strength) == steps."""
    total = int(steps / denoise)
    return total, _strength(total, steps)


def _strength(total: int, steps: int) -> float:
    """A strength (4 decimals) with which diffusers' img2img rule runs `steps` of `total`
    steps: int(total * strength) == steps, float rounding included."""
    strength = min(1.0, math.ceil(steps / total * 10_000) / 10_000)
    while int(total * strength) > steps:
        strength = round(strength - 1e-4, 4)
    while int(total * strength) < steps and strength < 1.0:
        strength = min(1.0, round(strength + 1e-4, 4))
    return strength


def _seed(c: Converter, cn: ComfyNode, seed: Any) -> Any:
    if isinstance(seed, Port):
        return seed
    if isinstance(seed, bool) or not isinstance(seed, int):
        if isinstance(seed, float) and seed == int(seed):
            seed = int(seed)
        else:
            raise Unmappable(f"seed {seed!r} is not a whole number")
    if seed < 0:
        c.note(cn, f"seed {seed} is negative; imported as {seed % 2**64}, as torch takes it")
        seed %= 2**64
    if seed > INT64_MAX:
        c.note(cn, f"seed {seed} is above Loom's maximum 2^63-1: imported as "
                   f"{seed & INT64_MAX} (a different picture)")
        seed &= INT64_MAX
    return seed


def _sample(c: Converter, cn: ComfyNode, *, model: Port, positive: Port, negative: Port | None,
            latent: Any, seed: Any, steps: int, cfg: Any, sampler_name: str, scheduler: str,
            denoise: float = 1.0, add_noise: bool = True, start_step: int = 0,
            end_step: int | None = None, leftover: bool = True) -> list[Any]:
    """The Loom nodes of one ComfyUI sampler: [UNet Step (shared per model) -> Apply ControlNet
    ...] -> CFG Combine -> Sampler <- Scheduler, Latent Noise."""
    if steps < 1:
        raise Unmappable(f"steps {steps}")
    name, notes = loom_scheduler(sampler_name, scheduler, _choices(c))
    for n in notes:
        c.note(cn, n)
    if name in STOCHASTIC:
        c.note(cn, f"'{name}' adds noise on every step: Loom continues the seed's random "
                   "stream (as diffusers does), ComfyUI uses its own generator, so the pictures "
                   "differ even where the schedule agrees")

    # the latent to start from
    init: Port | None = None
    mask: Port | None = None
    image_cond: str | None = None
    size = _size_of(latent)
    if isinstance(latent, InpaintLatent):
        init, mask, image_cond = _inpaint(c, cn, model, latent, denoise)
    elif isinstance(latent, Port):
        init, mask = latent, latent.mask
        if latent.mask is not None:
            c.note(cn, "inpainting with a noise mask: Loom's Sampler blends the kept part back "
                       "after each step (as diffusers), ComfyUI before and after each model "
                       "call; Loom's mask is sharp at latent size (binarised at 0.5), "
                       "ComfyUI's is blended")
    elif not isinstance(latent, EmptyLatent):
        raise Unmappable(f"its latent_image is {_describe(latent)}")

    # how much of the schedule to run
    total, strength, start, end = steps, 1.0, 0.0, 1.0
    if isinstance(latent, EmptyLatent) and (denoise < 1.0 or start_step > 0):
        c.note(cn, "starts part-way on an empty latent, which Loom cannot express: imported as "
                   "a full denoise from noise")
        start_step, denoise = 0, 1.0
    if denoise <= 0:
        raise Unmappable(f"denoise {denoise} changes nothing")
    if denoise < 1.0:
        total, strength = _steps_and_strength(steps, denoise)
    if end_step is not None and end_step < steps:
        if end_step <= start_step:
            raise Unmappable(f"end_at_step {end_step} is not after start_at_step {start_step}")
        end = end_step / steps
        if not leftover:
            c.note(cn, "return_with_leftover_noise 'disable' with an early end_at_step: "
                       "ComfyUI denoises the last step fully, Loom's Scheduler end keeps the "
                       "leftover noise (as diffusers' denoising_end)")
    if start_step > 0:
        if start_step >= steps:
            raise Unmappable(f"start_at_step {start_step} is not below steps {steps}")
        if add_noise:  # noise added at the starting step: diffusers' img2img strength
            strength = _strength(steps, steps - start_step)
        else:  # continue a latent that is already noisy (a refiner): diffusers' denoising_start
            start = start_step / steps
    if start > 0.0 and end < 1.0 and start >= end:
        raise Unmappable("the step range is empty")
    if not add_noise and start == 0.0:
        if init is None:
            raise Unmappable("add_noise 'disable' on an empty latent starts from nothing")
        if strength < 1.0 or denoise < 1.0:
            raise Unmappable("add_noise 'disable' with a partial denoise has no Loom "
                             "equivalent")
        c.note(cn, "add_noise 'disable' from the first step: Loom starts from the latent as "
                   "it is only part-way into the schedule; imported with noise added")
        add_noise = True

    # the denoiser: UNet Step (+ ControlNets) -> CFG Combine
    den: Port = Port(c.shared(("unet", model.node, model.output), lambda: c.add(
        f"unet_{model.node}", "sampling.unet_step", {"model": model}, cn, (-260, 240))),
        "denoiser", "DENOISER")
    controls: list[Control] = []
    for ctrl in positive.controls + (negative.controls if negative is not None else ()):
        if all(ctrl.cid != x.cid for x in controls):
            controls.append(ctrl)
    for k, ctrl in enumerate(controls):
        if ctrl.positive_only:
            c.note(cn, f"ControlNetApply {ctrl.cid} steers the prompt only in ComfyUI; Loom's "
                       "Apply ControlNet steers the prompt and the negative prompt alike (as "
                       "diffusers and ControlNetApplyAdvanced do)")
        nid = c.add(f"control_{ctrl.cid}_{cn.id}", "controlnet.apply", {
            "denoiser": den, "control_net": ctrl.net, "image": ctrl.image,
            "strength": ctrl.strength, "start": ctrl.start, "end": ctrl.end}, cn,
            (-260, 360 + 190 * k))
        den = Port(nid, "denoiser", "DENOISER")
    if isinstance(cfg, Port):
        scale: Any = cfg
    else:
        scale = float(_num(c, cn, cfg, "cfg"))
        if scale > 30.0:
            c.note(cn, f"cfg {scale:g} is above Loom's maximum 30: imported as 30")
            scale = 30.0
        if 0.0 < scale < 1.0:
            c.note(cn, f"cfg {scale:g} < 1: ComfyUI mixes in the negative prompt, Loom uses "
                       "the prompt alone at a scale <= 1")
        if scale < 0:
            raise Unmappable(f"cfg {scale:g} is negative")
    cfg_id = c.add(f"cfg_{cn.id}", "sampling.cfg_combine", {
        "denoiser": den, "positive": positive,
        "negative": negative if negative is not None else None, "scale": scale}, cn, (0, 240))
    if negative is None and not isinstance(scale, Port) and scale > 1.0:
        raise Unmappable("guidance above 1 without a negative conditioning")

    sched_id = c.add(f"scheduler_{cn.id}", "sampling.scheduler", {
        "model": model, "name": name, "steps": total, "strength": strength,
        "start": start, "end": end}, cn, (0, 480))

    noise_id = None
    if add_noise:
        if size is None:
            width, height, batch = 512, 512, 1
            c.note(cn, "the size of its latent is not known at import (an image file that was "
                       f"not found?): set noise_{_safe(cn.id)}'s width and height to the image's")
        else:
            width, height, batch = size
        noise_id = c.add(f"noise_{cn.id}", "latents.noise", {
            "seed": _seed(c, cn, seed), "width": width, "height": height, "batch": batch,
            "model": model}, cn, (0, 720))
    inputs: dict[str, Any] = {"denoiser": Port(cfg_id, "denoiser", "GUIDED_DENOISER"),
                              "scheduler": Port(sched_id, "scheduler", "SCHEDULER")}
    if noise_id is not None:
        inputs["noise"] = Port(noise_id, "noise", "NOISE")
    if init is not None:
        inputs["init"] = init
    if mask is not None:
        inputs["mask"] = mask
    if image_cond is not None:
        inputs["image_cond"] = Port(image_cond, "image_cond", "IMAGE_COND")
    nid = c.add(f"sampler_{cn.id}", "sampling.sampler", inputs, cn)
    return [Port(nid, "latent", "LATENT", size=size)]


def _num(c: Converter, cn: ComfyNode, value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            not math.isfinite(value):
        raise Unmappable(f"'{name}' is {value!r}, not a number")
    return float(value)


def _choices(c: Converter) -> tuple[str, ...] | None:
    spec = c.reg.get("sampling.scheduler") if c.reg is not None else None
    inp = spec.inputs.get("name") if spec is not None else None
    return tuple(inp.choices) if inp is not None and inp.choices else None


def _inpaint(c: Converter, cn: ComfyNode, model: Port, inp: InpaintLatent,
             denoise: float) -> tuple[Port | None, Port | None, str | None]:
    """VAEEncodeForInpaint as Loom nodes: for an inpainting model, Inpaint Conditioning (the
    UNet's mask + masked-image channels); for an ordinary one, the image's latent with the
    Sampler's mask."""
    choice = c.opts.inpaint_model
    ckpt = model.ckpt or ""
    inpainting = choice == "yes" or (choice == "auto" and "inpaint" in ckpt.lower())
    src = c.g.nodes.get(inp.cid)
    if choice == "auto":
        c.note(src, f"the checkpoint {ckpt!r} is taken for "
                    f"{'an inpainting' if inpainting else 'an ordinary'} model (by its name; "
                    "import with --inpaint-model yes/no to choose)")
    init = None
    if not inpainting or denoise < 1.0:
        enc = c.shared(("encode", inp.cid), lambda: c.add(
            f"encode_{inp.cid}", "latents.vae_encode",
            {"vae": inp.vae, "image": inp.pixels, "mode": "mean"}, src))
        init = Port(enc, "latent", "LATENT")
    if not inpainting:
        c.note(src, "an ordinary model inpaints through the Sampler's mask: the masked part is "
                    "not greyed before encoding (at full denoise the Sampler starts from noise "
                    "there)")
        return init, inp.mask, None
    cond = c.shared(("inpaint", inp.cid), lambda: c.add(
        f"inpaint_{inp.cid}", "inpaint.prepare",
        {"vae": inp.vae, "image": inp.pixels, "mask": inp.mask, "mode": "mean"}, src))
    c.note(src, "an inpainting model: Loom's Inpaint Conditioning encodes the image with the "
                "masked part blanked (as ComfyUI greys it) and the Sampler starts from noise, "
                "as diffusers' inpaint pipeline does")
    return init, None, cond


@maps("KSampler", needs=SAMPLING_NODES)
def _ksampler(c: Converter, cn: ComfyNode) -> list[Any]:
    return _sample(c, cn, model=c.port(cn, "model"), positive=c.port(cn, "positive"),
                   negative=c.port(cn, "negative"), latent=c.link(cn, "latent_image"),
                   seed=c.value(cn, "seed", 0), steps=c.number(cn, "steps", 20, integer=True),
                   cfg=c.value(cn, "cfg", 8.0),
                   sampler_name=c.text(cn, "sampler_name", "euler"),
                   scheduler=c.text(cn, "scheduler", "normal"),
                   denoise=float(c.number(cn, "denoise", 1.0)))


def _on(value: Any) -> bool:
    return value in (True, "enable", "enabled", "true", 1)


@maps("KSamplerAdvanced", needs=SAMPLING_NODES)
def _ksampler_advanced(c: Converter, cn: ComfyNode) -> list[Any]:
    steps = c.number(cn, "steps", 20, integer=True)
    end = c.number(cn, "end_at_step", 10000, integer=True)
    return _sample(c, cn, model=c.port(cn, "model"), positive=c.port(cn, "positive"),
                   negative=c.port(cn, "negative"), latent=c.link(cn, "latent_image"),
                   seed=c.value(cn, "noise_seed", 0), steps=steps, cfg=c.value(cn, "cfg", 8.0),
                   sampler_name=c.text(cn, "sampler_name", "euler"),
                   scheduler=c.text(cn, "scheduler", "normal"),
                   add_noise=_on(c.const(cn, "add_noise", "enable")),
                   start_step=c.number(cn, "start_at_step", 0, integer=True, lo=0),
                   end_step=min(end, steps),
                   leftover=_on(c.const(cn, "return_with_leftover_noise", "disable")))


def _custom(c: Converter, cn: ComfyNode, guider: Guider, noise: NoiseSource) -> list[Any]:
    sampler = c.link(cn, "sampler")
    sigmas = c.link(cn, "sigmas")
    if not isinstance(sampler, SamplerChoice):
        raise Unmappable(f"its sampler is {_describe(sampler)}; Loom maps KSamplerSelect")
    if not isinstance(sigmas, Sigmas):
        raise Unmappable(f"its sigmas are {_describe(sigmas)}; Loom maps BasicScheduler")
    out = _sample(c, cn, model=guider.model, positive=guider.positive,
                  negative=guider.negative, latent=c.link(cn, "latent_image"),
                  seed=noise.seed if noise.seed is not None else 0, steps=sigmas.steps,
                  cfg=guider.cfg, sampler_name=sampler.name, scheduler=sigmas.scheduler,
                  denoise=sigmas.denoise, add_noise=noise.seed is not None)
    if sigmas.model != guider.model:
        c.note(cn, "its BasicScheduler takes another model than its guider: Loom's Scheduler "
                   "uses the guider's")
    return [out[0], Unavailable(f"the denoised_output of {cn.type} {cn.id} has no Loom "
                                "equivalent (Loom's Sampler outputs the final latent)")]


@maps("SamplerCustom", needs=SAMPLING_NODES)
def _sampler_custom(c: Converter, cn: ComfyNode) -> list[Any]:
    guider = Guider(c.port(cn, "model"), c.port(cn, "positive"), c.port(cn, "negative"),
                    c.value(cn, "cfg", 8.0), cn.id)
    add = _on(c.const(cn, "add_noise", True))
    noise = NoiseSource(c.value(cn, "noise_seed", 0) if add else None, cn.id)
    return _custom(c, cn, guider, noise)


@maps("SamplerCustomAdvanced", needs=SAMPLING_NODES)
def _sampler_custom_advanced(c: Converter, cn: ComfyNode) -> list[Any]:
    guider = c.link(cn, "guider")
    noise = c.link(cn, "noise")
    if not isinstance(guider, Guider):
        raise Unmappable(f"its guider is {_describe(guider)}; Loom maps CFGGuider and "
                         "BasicGuider")
    if not isinstance(noise, NoiseSource):
        raise Unmappable(f"its noise is {_describe(noise)}; Loom maps RandomNoise and "
                         "DisableNoise")
    return _custom(c, cn, guider, noise)


def convert(graph: ComfyGraph, registry: Any = None,
            options: ImportOptions | None = None) -> tuple[dict[str, Any], ImportReport]:
    """A Loom workflow document for a ComfyUI graph, and what the import did."""
    conv = Converter(graph, registry, options)
    doc = conv.run()
    return doc, conv.report
