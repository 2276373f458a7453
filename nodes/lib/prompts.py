"""Prompt weighting and text encoding, as Stable Diffusion users write prompts.

Syntax (AUTOMATIC1111's, also ComfyUI's):
    (word)        weight x 1.1           ((word)) x 1.21, and so on
    [word]        weight / 1.1
    (word:1.3)    weight x 1.3           nests: ((a:2) b:0.5) -> a x 1.0, b x 0.5
    \\( \\) \\[ \\]  literal brackets         \\\\ a literal backslash
    BREAK         start a new 77-token chunk
Unclosed brackets weight the rest of the prompt (as A1111 does); a stray closing bracket is text.

Encoding: the prompt's tokens are cut into chunks of 75, each encoded as <bos> + 75 + <eos>
padded to 77, and the chunks' embeddings concatenated ([1, 77 * chunks, dim]). A weighted token's
embedding is scaled by its weight and the chunk's mean is restored afterwards (A1111's method),
so weights shift emphasis without changing the overall magnitude. A prompt without weights that
fits in one chunk is tokenized exactly as diffusers' pipelines do it, giving identical numbers.

Embeddings (textual inversion, nodes.lib.embeddings): `embedding:name` (or a bare embedding file
name) takes as many token positions as the embedding has vectors, weighted like the words around
it; a chunk that has no room for all of them starts a new one. The vectors replace the token
embeddings at those positions for the one encoder call (a forward hook on the token-embedding
layer, removed after the call), so the shared tokenizer and text encoder never change.
"""

from __future__ import annotations

import re
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

from nodes._limits import MAX_PROMPT_CHUNKS, PromptTooLongError
from nodes.lib.families import FAMILY_TABLE

ROUND = 1.1
SQUARE = 1 / 1.1
CHUNK_TOKENS = 75  # + <bos> + <eos> = CLIP's 77 positions

# One token of the weighting syntax per match, in priority order.
_TOKEN = re.compile(
    r"""\\[()\[\]\\]          # escaped bracket or backslash
      | \\                    # a lone backslash: literal
      | \(                    # open round
      | \[                    # open square
      | :\s*([+-]?(?:\d+\.?\d*|\.\d+))\s*\)   # ':1.2)' closes a round bracket with a weight
      | \)                    # close round
      | \]                    # close square
      | [^\\()\[\]:]+         # plain text
      | :                     # a colon that is not a weight
    """,
    re.VERBOSE,
)
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


@dataclass(frozen=True)
class Fragment:
    text: str
    weight: float = 1.0
    is_break: bool = False


def parse_prompt(text: str) -> list[Fragment]:
    """Split `text` into fragments of equal weight (adjacent equal weights merged)."""
    pieces: list[list] = []  # [text, weight, is_break]
    round_open: list[int] = []
    square_open: list[int] = []

    def scale(start: int, factor: float) -> None:
        for p in pieces[start:]:
            p[1] *= factor

    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        weight = m.group(1)
        if tok.startswith("\\") and len(tok) == 2:
            pieces.append([tok[1], 1.0, False])
        elif tok == "(":
            round_open.append(len(pieces))
        elif tok == "[":
            square_open.append(len(pieces))
        elif weight is not None and round_open:
            scale(round_open.pop(), float(weight))
        elif tok == ")" and round_open:
            scale(round_open.pop(), ROUND)
        elif tok == "]" and square_open:
            scale(square_open.pop(), SQUARE)
        elif weight is not None:  # ':1.2)' without an open bracket: literal text
            pieces.append([tok, 1.0, False])
        else:
            parts = _BREAK.split(tok)
            for i, part in enumerate(parts):
                if i > 0:
                    pieces.append(["BREAK", 1.0, True])
                if part:
                    pieces.append([part, 1.0, False])
    for start in round_open:
        scale(start, ROUND)
    for start in square_open:
        scale(start, SQUARE)

    merged: list[Fragment] = []
    for t, w, brk in pieces:
        if brk:
            merged.append(Fragment("", 1.0, True))
        elif merged and not merged[-1].is_break and merged[-1].weight == w:
            merged[-1] = Fragment(merged[-1].text + t, w)
        else:
            merged.append(Fragment(t, w))
    return [f for f in merged if f.is_break or f.text]


def has_weights(fragments: list[Fragment]) -> bool:
    return any(f.is_break or abs(f.weight - 1.0) > 1e-12 for f in fragments)


# ---- tokenization -----------------------------------------------------------------------------


@dataclass
class TokenChunks:
    """Token ids and per-token weights, one row of 77 per chunk."""

    ids: list[list[int]]
    weights: list[list[float]]
    masks: list[list[int]]  # 1 up to and including <eos>, 0 on padding
    plain: bool  # no weights, one chunk: identical to the pipelines' tokenization
    injected: list[dict[int, Any]] = field(default_factory=list)
    """Per chunk: {position: embedding vector} to put in place of the token embedding."""


# The token id at an embedding's positions: its token embedding is replaced, so the id only
# has to stay out of the way of the pooled output, which CLIP takes at the first <eos> (or, in
# configs with the legacy eos_token_id 2, at the highest id): 0 is neither.
EMBEDDING_PLACEHOLDER_ID = 0


def tokenize(tokenizer, text: str, embeddings=None) -> TokenChunks:
    """`embeddings` (nodes.lib.embeddings.EncoderEmbeddings): finds the embeddings the text
    names and gives their vectors for this encoder; None reads the text as plain words."""
    max_len = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if max_len > 1000:  # tokenizers saved without a max length
        max_len = 77
    fragments = parse_prompt(text)
    pieces = [[f.text] if f.is_break or embeddings is None else embeddings.split(f.text)
              for f in fragments]
    if not has_weights(fragments) and all(isinstance(p, str) for ps in pieces for p in ps):
        text = "".join(f.text for f in fragments)  # escapes resolved; else the text as given
        n = len(tokenizer(text, add_special_tokens=False).input_ids)
        if n <= max_len - 2:
            enc = tokenizer(text, padding="max_length", max_length=max_len, truncation=True)
            return TokenChunks([list(enc.input_ids)], [[1.0] * max_len],
                               [list(enc.attention_mask)], True)

    per_chunk = max_len - 2
    chunks: list[tuple[list[int], list[float], dict[int, Any]]] = [([], [], {})]
    for frag, frag_pieces in zip(fragments, pieces):
        if frag.is_break:
            if chunks[-1][0]:
                chunks.append(([], [], {}))
            continue
        for piece in frag_pieces:
            if not isinstance(piece, str):
                vectors = embeddings.vectors(piece)
                n = int(vectors.shape[0])
                if n > per_chunk:
                    from nodes.lib.embeddings import EmbeddingError

                    raise EmbeddingError(f"embedding '{piece.name}' has {n} vectors, more than "
                                         f"the {per_chunk} positions of a chunk")
                if len(chunks[-1][0]) + n > per_chunk:  # keep an embedding in one chunk
                    chunks.append(([], [], {}))
                for v in vectors:
                    chunks[-1][2][1 + len(chunks[-1][0])] = v  # + 1: after <bos>
                    chunks[-1][0].append(EMBEDDING_PLACEHOLDER_ID)
                    chunks[-1][1].append(frag.weight)
                continue
            for tid in tokenizer(piece, add_special_tokens=False).input_ids:
                if len(chunks[-1][0]) == per_chunk:
                    chunks.append(([], [], {}))
                chunks[-1][0].append(tid)
                chunks[-1][1].append(frag.weight)
        if len(chunks) > MAX_PROMPT_CHUNKS:
            raise PromptTooLongError(
                f"the prompt is over {MAX_PROMPT_CHUNKS} chunks of {per_chunk} tokens "
                f"({MAX_PROMPT_CHUNKS * per_chunk} tokens), the limit; shorten it")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids, weights, masks = [], [], []
    for toks, ws, _ in chunks:
        row = [bos, *toks, eos]
        wrow = [1.0, *ws, 1.0]
        masks.append([1] * len(row) + [0] * (max_len - len(row)))
        row += [pad] * (max_len - len(row))
        wrow += [1.0] * (max_len - len(wrow))
        ids.append(row)
        weights.append(wrow)
    return TokenChunks(ids, weights, masks, False, [c[2] for c in chunks])


# ---- encoding ---------------------------------------------------------------------------------


@dataclass
class Encoded:
    embeds: object  # torch tensor [1, 77 * chunks, dim]
    pooled: object | None  # [1, dim] (SDXL, latent upscaler), else None


def _final_norm(encoder):
    return getattr(encoder, "text_model", encoder).final_layer_norm


_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_LOCKS_LOCK = threading.Lock()


def _encoder_lock(encoder) -> threading.Lock:
    """One lock per text encoder: a call with embeddings hooks the shared module for its
    duration, so no other call may run the encoder meanwhile."""
    with _LOCKS_LOCK:
        lock = _LOCKS.get(encoder)
        if lock is None:
            lock = _LOCKS[encoder] = threading.Lock()
        return lock


def _run_encoder(encoder, ids_t, kwargs, inject: dict[int, Any] | None):
    """encoder(ids), with the token embeddings at `inject`'s positions replaced by its vectors
    (a forward hook on the token-embedding layer for this one call)."""
    import torch

    with _encoder_lock(encoder):
        if not inject:
            return encoder(ids_t, output_hidden_states=True, **kwargs)
        positions = torch.tensor(sorted(inject), dtype=torch.long)
        vectors = torch.stack([inject[p] for p in sorted(inject)])

        def replace(module, args, output):
            out = output.clone()
            out[:, positions.to(out.device)] = vectors.to(out.device, out.dtype)
            return out

        handle = encoder.get_input_embeddings().register_forward_hook(replace)
        try:
            return encoder(ids_t, output_hidden_states=True, **kwargs)
        finally:
            handle.remove()


def _encode_chunk(encoder, ids, mask, family: str, clip_skip: int, is_sdxl: bool,
                  inject: dict[int, Any] | None = None):
    """Hidden states for one 77-token row, selected the way the family's pipeline does."""
    import torch

    from nodes.lib.vram import module_device

    device = module_device(encoder)
    ids_t = torch.tensor([ids], dtype=torch.long, device=device)
    kwargs = {}
    if getattr(encoder.config, "use_attention_mask", False):  # as StableDiffusionPipeline
        kwargs["attention_mask"] = torch.tensor([mask], device=device)
    out = _run_encoder(encoder, ids_t, kwargs, inject)
    pooled = None
    if is_sdxl:
        hidden = out.hidden_states[-(clip_skip + 1)]  # SDXL: penultimate layer, not normed
        if out[0].ndim == 2:  # CLIPTextModelWithProjection: text_embeds
            pooled = out[0]
    elif family == "sd_latent_upscaler":
        hidden = out.hidden_states[-clip_skip]
        pooled = out.pooler_output
    elif clip_skip <= 1:
        hidden = out[0]  # last_hidden_state (final layer norm applied)
    else:
        hidden = _final_norm(encoder)(out.hidden_states[-clip_skip])
    return hidden, pooled


def _apply_weights(z, weights):
    """Scale each token's embedding by its weight, then restore the chunk's mean (A1111)."""
    import torch

    w = torch.tensor(weights, dtype=torch.float32, device=z.device).view(1, -1, 1)
    zf = z.float()
    before = zf.mean()
    zf = zf * w
    after = zf.mean()
    if after.abs() > 0:
        zf = zf * (before / after)
    return zf.to(z.dtype)


def encode_with(tokenizer, encoder, text: str, family: str, clip_skip: int = 1,
                embeddings=None) -> Encoded:
    """Encode `text` with one tokenizer / text encoder pair (`embeddings`: see tokenize)."""
    import torch

    info = FAMILY_TABLE.get(family)
    is_sdxl = info is not None and info.sdxl_conditioning
    chunks = tokenize(tokenizer, text, embeddings)
    injected = chunks.injected or [None] * len(chunks.ids)
    hiddens = []
    pooled = None
    with torch.no_grad():
        for ids, weights, mask, inject in zip(chunks.ids, chunks.weights, chunks.masks,
                                              injected):
            hidden, p = _encode_chunk(encoder, ids, mask, family, clip_skip, is_sdxl, inject)
            if any(abs(w - 1.0) > 1e-12 for w in weights):
                hidden = _apply_weights(hidden, weights)
            hiddens.append(hidden)
            if pooled is None:
                pooled = p  # the first chunk's pooled output, as A1111 and ComfyUI use
    return Encoded(torch.cat(hiddens, dim=1), pooled)


def encode_prompt(clip, text: str, clip_skip: int = 1, embeddings=None):
    """A Conditioning for `text` with every text encoder of `clip` (a ClipBundle).
    `embeddings` (nodes.lib.embeddings.Embeddings) finds the embeddings the prompt names; by
    default in the embeddings folders of the environment (LOOM_EMBEDDINGS_DIR)."""
    import torch

    from nodes.lib.bundles import Conditioning
    from nodes.lib.embeddings import Embeddings, EncoderEmbeddings, roles

    if clip_skip < 1:
        raise ValueError("clip_skip must be 1 (last layer) or more")
    if embeddings is None:
        embeddings = Embeddings.from_options()
    family = clip.family
    outs = []
    pooled = None
    encoders = clip.text_encoders
    for tokenizer, encoder, role in zip(clip.tokenizers, encoders,
                                        roles(family, len(encoders))):
        width = int(encoder.get_input_embeddings().embedding_dim)
        enc = encode_with(tokenizer, encoder, text, family, clip_skip,
                          EncoderEmbeddings(embeddings, role, width))
        outs.append(enc.embeds)
        if enc.pooled is not None:
            pooled = enc.pooled  # SDXL: the last encoder's (text_encoder_2) pooled output
    if len({o.shape[1] for o in outs}) > 1:
        raise ValueError("the text encoders cut the prompt into different numbers of chunks")
    embeds = torch.cat(outs, dim=-1) if len(outs) > 1 else outs[0]
    return Conditioning(embeds=embeds, pooled=pooled, family=family, extra={})


def zero_conditioning(clip, like=None):
    """SDXL's unconditional embedding for an empty negative prompt (diffusers'
    force_zeros_for_empty_prompt): zeros of the shape an encoded prompt has."""
    import torch

    from nodes.lib.bundles import Conditioning

    ref = like if like is not None else encode_prompt(clip, "")
    pooled = None if ref.pooled is None else torch.zeros_like(ref.pooled)
    return Conditioning(embeds=torch.zeros_like(ref.embeds), pooled=pooled, family=clip.family,
                        extra={"zeroed": True})


def with_sdxl_extra(cond, original_size: tuple[int, int] = (0, 0),
                    crops_coords_top_left: tuple[int, int] = (0, 0),
                    target_size: tuple[int, int] = (0, 0), aesthetic_score: float | None = None):
    """A copy of `cond` carrying SDXL micro-conditioning in `extra`, in diffusers' terms:
    `original_size` and `target_size` as (height, width), `crops_coords_top_left` as (top, left),
    `aesthetic_score` (refiner). A size with a 0 is left out, so the sampler uses the image
    size there, exactly as when this node is absent (Conditioning.extra empty); a crop of
    (0, 0) is left out too, so a negative prompt without sizes still borrows the positive's."""
    from nodes.lib.bundles import Conditioning

    extra = dict(cond.extra or {})
    if all(original_size):
        extra["original_size"] = (int(original_size[0]), int(original_size[1]))
    if all(target_size):
        extra["target_size"] = (int(target_size[0]), int(target_size[1]))
    if any(crops_coords_top_left):  # (0, 0) is the default: leave it to the sampler
        extra["crops_coords_top_left"] = (int(crops_coords_top_left[0]),
                                          int(crops_coords_top_left[1]))
    if aesthetic_score is not None:
        extra["aesthetic_score"] = float(aesthetic_score)
    return Conditioning(embeds=cond.embeds, pooled=cond.pooled, family=cond.family, extra=extra)
