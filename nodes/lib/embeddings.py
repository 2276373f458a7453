"""Textual inversion: embeddings named in prompts, found in the embeddings folders.

A prompt names an embedding as `embedding:name` (ComfyUI's form; `(embedding:name:1.2)` weights
it like any words), or by its bare file name as AUTOMATIC1111 does (a whole word equal to an
embedding file's name, any case). Files: A1111 `.pt` / `.safetensors` (`string_to_param`,
`emb_params`), diffusers `learned_embeds` (one token -> its vectors), SDXL pairs (`clip_l`,
`clip_g`). `.pt` / `.bin` files are read with torch.load(weights_only=True): plain tensors only.

Where names are looked up (`embedding_folders`, the one place to point elsewhere): the workflow's
folder's `embeddings/`, then the folders in LOOM_EMBEDDINGS_DIR (os.pathsep-separated) or, when
it is not set, the model library's embeddings folders (engine.library: `embeddings/` in the
models folder, ComfyUI's and A1111's); a run option `embeddings_dir` comes first. A name may
hold a subfolder (`embedding:styles/ink`) and may leave out the suffix.

The vectors are not added to the tokenizer or the text encoder (both are shared by every graph):
nodes.lib.prompts puts them into the token-embedding output of the encoder at the positions the
prompt gives them, for one call. This module imports torch only to read files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from engine.paths import file_identity, resolve_path

ENV = "LOOM_EMBEDDINGS_DIR"
OPTION = "embeddings_dir"
EMBEDDING_SUFFIXES = (".safetensors", ".pt", ".bin", ".pth", ".ckpt")
MAX_ENTRIES = 4000  # files and folders one search reads, so a folder set to "/" stays quick
PREFIX = "embedding:"
_REF = re.compile(r"embedding:([^\s,()\[\]:]+)")
_WORD = re.compile(r"[^\s,()\[\]:;|\"']+")
_TRAILING = ".!?;'\""


class EmbeddingError(ValueError):
    """An embedding that cannot be used (not found, unreadable, for another model)."""


def embedding_folders(options: dict[str, Any] | None = None) -> list[Path]:
    """The folders searched for embeddings, first match wins (see the module docstring)."""
    options = options or {}
    folders: list[Path] = []
    extra = options.get(OPTION)
    if extra:
        folders += [resolve_path(str(p), options) for p in str(extra).split(os.pathsep) if p]
    base = options.get("base_dir")
    if base:
        folders.append(Path(base) / "embeddings")
    env = os.environ.get(ENV)
    if env:
        folders += [Path(os.path.expanduser(p)) for p in env.split(os.pathsep) if p]
    else:  # the model library's embeddings folders (engine.library: models/embeddings, ...)
        from engine.library import current_library

        folders += current_library().folders("embeddings")
    seen: list[Path] = []
    for f in folders:
        if f not in seen:
            seen.append(f)
    return seen


def _walk(folders: Iterable[Path]) -> Iterable[Path]:
    """Embedding files under the folders (subfolders too), at most MAX_ENTRIES entries read."""
    budget = MAX_ENTRIES
    for folder in folders:
        if not folder.is_dir():
            continue
        stack = [folder]
        while stack and budget > 0:
            where = stack.pop()
            try:
                with os.scandir(where) as it:
                    entries = sorted(it, key=lambda e: e.name)
            except OSError:
                continue
            for entry in entries:
                budget -= 1
                if budget < 0:
                    return
                try:
                    if entry.is_dir():
                        stack.append(Path(entry.path))
                    elif entry.name.lower().endswith(EMBEDDING_SUFFIXES):
                        yield Path(entry.path)
                except OSError:
                    continue


@dataclass(frozen=True)
class EmbeddingRef:
    """A place in a prompt that names an embedding, resolved to its file."""

    name: str
    path: Path


class Embeddings:
    """Finds the embeddings a prompt names, in `folders`."""

    def __init__(self, folders: list[Path]):
        self.folders = list(folders)
        self._index: dict[str, Path] | None = None
        self._found: dict[str, Path | None] = {}

    @classmethod
    def from_options(cls, options: dict[str, Any] | None = None) -> Embeddings:
        return cls(embedding_folders(options))

    def find(self, name: str) -> Path | None:
        """The file `embedding:name` means: name (a relative path, suffix optional) in each
        folder, then a file of that name (without its suffix) anywhere below them."""
        if name in self._found:
            return self._found[name]
        found = None
        if ".." not in Path(name).parts and not Path(name).is_absolute():
            for folder in self.folders:
                for cand in (folder / name, *(folder / (name + s) for s in EMBEDDING_SUFFIXES)):
                    if cand.suffix.lower() in EMBEDDING_SUFFIXES and cand.is_file():
                        found = cand
                        break
                if found is not None:
                    break
        if found is None and "/" not in name:
            found = self.index().get(name.lower())
        self._found[name] = found
        return found

    def index(self) -> dict[str, Path]:
        """{file name without suffix, lower case: file} of every embedding in the folders."""
        if self._index is None:
            index: dict[str, Path] = {}
            for p in _walk(self.folders):
                index.setdefault(p.stem.lower(), p)
            self._index = index
        return self._index

    def split(self, text: str) -> list[str | EmbeddingRef]:
        """`text` as plain pieces and embeddings, in order. An `embedding:name` that no file
        matches is an error; a bare word is an embedding only when a file has its name."""
        pieces: list[str | EmbeddingRef] = []
        pos = 0
        for m in _REF.finditer(text):
            name = m.group(1)
            path = self.find(name)
            end = m.end()
            if path is None:
                stripped = name.rstrip(_TRAILING)
                path = self.find(stripped) if stripped and stripped != name else None
                if path is not None:
                    end = m.start(1) + len(stripped)
                    name = stripped
            if path is None:
                raise EmbeddingError(self.not_found(name))
            pieces += self._bare(text[pos:m.start()])
            pieces.append(EmbeddingRef(name, path))
            pos = end
        pieces += self._bare(text[pos:])
        return [p for p in pieces if not isinstance(p, str) or p]

    def _bare(self, text: str) -> list[str | EmbeddingRef]:
        if not text or not self.index():
            return [text]
        index = self.index()
        out: list[str | EmbeddingRef] = []
        pos = 0
        for m in _WORD.finditer(text):
            word = m.group(0).rstrip(_TRAILING)
            path = index.get(word.lower()) if word else None
            if path is None:
                continue
            out.append(text[pos:m.start()])
            out.append(EmbeddingRef(word, path))
            pos = m.start() + len(word)
        out.append(text[pos:])
        return out

    def refs(self, text: str) -> list[EmbeddingRef]:
        from nodes.lib.prompts import parse_prompt

        return [p for frag in parse_prompt(text) if not frag.is_break
                for p in self.split(frag.text) if isinstance(p, EmbeddingRef)]

    def not_found(self, name: str) -> str:
        where = ", ".join(str(f) for f in self.folders) or "no folder"
        return (f"embedding '{name}' not found: no {name}.safetensors / .pt / .bin in the "
                f"embeddings folders ({where}); put the file there, or set {ENV}")


def prompt_identity(text: Any, options: dict[str, Any] | None = None) -> tuple:
    """What a prompt's encoding depends on besides its text: the identities of the embedding
    files it names (a text not known yet: of the embeddings folders). Quick, torch-free: the
    text encoder nodes' cache_identity."""
    emb = Embeddings.from_options(options)
    if not isinstance(text, str):
        return tuple((str(f), file_identity(f)) for f in emb.folders if f.is_dir())
    try:
        refs = emb.refs(text)
    except EmbeddingError as exc:
        return ("error", str(exc))
    return tuple((r.name, file_identity(r.path)) for r in refs)


def prompt_problem(text: Any, options: dict[str, Any] | None = None) -> str | None:
    """Why the embeddings `text` names cannot be found, or None (the nodes' preflight)."""
    if not isinstance(text, str) or PREFIX not in text:
        return None
    try:
        Embeddings.from_options(options).refs(text)
    except EmbeddingError as exc:
        return str(exc)
    return None


# ---- reading files (torch) -------------------------------------------------------------------


def read_embedding(path: Path) -> dict[str, Any]:
    """{"*": vectors} or {"clip_l": ..., "clip_g": ...}, each a float tensor [n, dim]."""
    import torch

    path = Path(path)
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            data: Any = load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise EmbeddingError(f"{path.name} cannot be read as safetensors ({exc})") from exc
    else:
        import pickle

        try:
            data = torch.load(str(path), map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError,
                EOFError) as exc:
            raise EmbeddingError(
                f"{path.name} cannot be read safely: it holds more than plain tensors, and Loom "
                "never runs code from a model file (torch.load weights_only=True refused it); "
                "use a .safetensors copy") from exc
    found: dict[str, Any] = {}
    if isinstance(data, torch.Tensor):
        found["*"] = data
    elif isinstance(data, dict) and isinstance(data.get("string_to_param"), dict):
        params = [v for v in data["string_to_param"].values() if isinstance(v, torch.Tensor)]
        if len(params) != 1:
            raise EmbeddingError(f"{path.name}: expected one tensor in string_to_param")
        found["*"] = params[0]
    elif isinstance(data, dict):
        tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if "clip_l" in tensors or "clip_g" in tensors:
            found = {k: tensors[k] for k in ("clip_l", "clip_g") if k in tensors}
        elif "emb_params" in tensors:
            found["*"] = tensors["emb_params"]
        elif len(tensors) == 1:  # diffusers' learned_embeds: {token: vectors}
            found["*"] = next(iter(tensors.values()))
    if not found:
        raise EmbeddingError(
            f"{path.name} is not a textual inversion embedding (expected string_to_param, "
            "emb_params, clip_l / clip_g, or one token's vectors)")
    out = {}
    for k, v in found.items():
        v = v.detach().float()
        if v.ndim == 1:
            v = v.unsqueeze(0)
        if v.ndim != 2 or v.shape[0] == 0:
            raise EmbeddingError(f"{path.name}: {k} has shape {tuple(v.shape)}, expected "
                                 "[vectors, width]")
        out[k] = v
    if len({v.shape[0] for v in out.values()}) > 1:
        raise EmbeddingError(f"{path.name}: clip_l and clip_g hold different numbers of vectors")
    return out


def load_embedding(path: Path, models: Any = None) -> dict[str, Any]:
    """read_embedding, kept by the model manager under the file's identity."""
    from nodes.lib.model_manager import manager

    models = manager() if models is None else models
    return models.get(("embedding", file_identity(Path(path))), lambda: read_embedding(path),
                      size=lambda d: sum(v.numel() * v.element_size() for v in d.values()))


def roles(family: str, count: int) -> tuple[str | None, ...]:
    """Which vectors of an SDXL pair each text encoder takes ("clip_l", "clip_g"); None: the
    one set of a single-encoder model."""
    from nodes.lib.families import FAMILY_TABLE

    info = FAMILY_TABLE.get(family)
    if info is not None and info.sdxl_conditioning:
        return ("clip_g",) if count == 1 else ("clip_l", "clip_g")[:count]
    return (None,) * count


class EncoderEmbeddings:
    """The embeddings of a prompt as one text encoder uses them (nodes.lib.prompts)."""

    def __init__(self, embeddings: Embeddings, role: str | None, width: int, models: Any = None):
        self.embeddings = embeddings
        self.role = role
        self.width = width
        self.models = models

    def split(self, text: str) -> list[str | EmbeddingRef]:
        return self.embeddings.split(text)

    def vectors(self, ref: EmbeddingRef) -> Any:
        data = load_embedding(ref.path, self.models)
        if self.role is not None:
            v = data.get(self.role)
            if v is None:
                have = ", ".join(data) if "*" not in data else "one set of vectors"
                raise EmbeddingError(
                    f"embedding '{ref.name}' ({ref.path.name}) has {have}; this SDXL text "
                    f"encoder needs '{self.role}' (an SDXL embedding has clip_l and clip_g)")
        elif "*" in data:
            v = data["*"]
        else:
            fits = [t for t in data.values() if t.shape[-1] == self.width]
            if len(fits) != 1:
                raise EmbeddingError(f"embedding '{ref.name}' ({ref.path.name}) is an SDXL "
                                     "embedding (clip_l / clip_g); this model is not SDXL")
            v = fits[0]
        if v.shape[-1] != self.width:
            raise EmbeddingError(
                f"embedding '{ref.name}' ({ref.path.name}) is for a text encoder of width "
                f"{v.shape[-1]}; this model's is {self.width} (made for another model family)")
        return v
