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
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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


def tokenize(tokenizer, text: str) -> TokenChunks:
    max_len = int(getattr(tokenizer, "model_max_length", 77) or 77)
    if max_len > 1000:  # tokenizers saved without a max length
        max_len = 77
    fragments = parse_prompt(text)
    if not has_weights(fragments):
        text = "".join(f.text for f in fragments)  # escapes resolved; else the text as given
        n = len(tokenizer(text, add_special_tokens=False).input_ids)
        if n <= max_len - 2:
            enc = tokenizer(text, padding="max_length", max_length=max_len, truncation=True)
            return TokenChunks([list(enc.input_ids)], [[1.0] * max_len],
                               [list(enc.attention_mask)], True)

    per_chunk = max_len - 2
    chunks: list[tuple[list[int], list[float]]] = [([], [])]
    for frag in fragments:
        if frag.is_break:
            if chunks[-1][0]:
                chunks.append(([], []))
            continue
        for tid in tokenizer(frag.text, add_special_tokens=False).input_ids:
            if len(chunks[-1][0]) == per_chunk:
                chunks.append(([], []))
            chunks[-1][0].append(tid)
            chunks[-1][1].append(frag.weight)
        if len(chunks) > MAX_PROMPT_CHUNKS:
            raise PromptTooLongError(
                f"the prompt is over {MAX_PROMPT_CHUNKS} chunks of {per_chunk} tokens "
                f"({MAX_PROMPT_CHUNKS * per_chunk} tokens), the limit; shorten it")
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    ids, weights, masks = [], [], []
    for toks, ws in chunks:
        row = [bos, *toks, eos]
        wrow = [1.0, *ws, 1.0]
        masks.append([1] * len(row) + [0] * (max_len - len(row)))
        row += [pad] * (max_len - len(row))
        wrow += [1.0] * (max_len - len(wrow))
        ids.append(row)
        weights.append(wrow)
    return TokenChunks(ids, weights, masks, False)


# ---- encoding ---------------------------------------------------------------------------------


@dataclass
class Encoded:
    embeds: object  # torch tensor [1, 77 * chunks, dim]
    pooled: object | None  # [1, dim] (SDXL, latent upscaler), else None


def _final_norm(encoder):
    return getattr(encoder, "text_model", encoder).final_layer_norm


def _encode_chunk(encoder, ids, mask, family: str, clip_skip: int, is_sdxl: bool):
    """Hidden states for one 77-token row, selected the way the family's pipeline does."""
    import torch

    device = next(encoder.parameters()).device
    ids_t = torch.tensor([ids], dtype=torch.long, device=device)
    kwargs = {}
    if getattr(encoder.config, "use_attention_mask", False):  # as StableDiffusionPipeline
        kwargs["attention_mask"] = torch.tensor([mask], device=device)
    out = encoder(ids_t, output_hidden_states=True, **kwargs)
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


def encode_with(tokenizer, encoder, text: str, family: str, clip_skip: int = 1) -> Encoded:
    """Encode `text` with one tokenizer / text encoder pair."""
    import torch

    info = FAMILY_TABLE.get(family)
    is_sdxl = info is not None and info.sdxl_conditioning
    chunks = tokenize(tokenizer, text)
    hiddens = []
    pooled = None
    with torch.no_grad():
        for ids, weights, mask in zip(chunks.ids, chunks.weights, chunks.masks):
            hidden, p = _encode_chunk(encoder, ids, mask, family, clip_skip, is_sdxl)
            if any(abs(w - 1.0) > 1e-12 for w in weights):
                hidden = _apply_weights(hidden, weights)
            hiddens.append(hidden)
            if pooled is None:
                pooled = p  # the first chunk's pooled output, as A1111 and ComfyUI use
    return Encoded(torch.cat(hiddens, dim=1), pooled)


def encode_prompt(clip, text: str, clip_skip: int = 1):
    """A Conditioning for `text` with every text encoder of `clip` (a ClipBundle)."""
    import torch

    from nodes.lib.bundles import Conditioning

    if clip_skip < 1:
        raise ValueError("clip_skip must be 1 (last layer) or more")
    family = clip.family
    outs = []
    pooled = None
    for tokenizer, encoder in zip(clip.tokenizers, clip.text_encoders):
        enc = encode_with(tokenizer, encoder, text, family, clip_skip)
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
