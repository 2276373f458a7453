"""Text conditioning: prompts into embeddings (with A1111-style weights and long-prompt chunks)
and SDXL's size / crop / aesthetic micro-conditioning. Torch is imported only when a node runs."""

from __future__ import annotations

from engine.node import Input, Output, RunContext, node
from engine.types import FLOAT, INT, STRING
from nodes._types import CLIP, CONDITIONING

_PROMPT_HELP = ("(word) x1.1, [word] /1.1, (word:1.3) any weight, \\( \\) literal brackets, "
                "BREAK starts a new 77-token chunk; longer prompts are encoded in chunks; "
                "embedding:name uses a textual inversion embedding from the embeddings folder")


def _encode(encode_prompt, clip, text, clip_skip, options=None):
    """encode_prompt, with a prompt over the length limit (a linked text is only known now)
    or an embedding that cannot be used reported as an error of the `text` input."""
    from engine.errors import NodeInputError
    from nodes._limits import PromptTooLongError, prompt_problem
    from nodes.lib.embeddings import EmbeddingError, Embeddings

    why = prompt_problem(text)
    if why is not None:
        raise NodeInputError("text", why)
    try:
        return encode_prompt(clip, text, clip_skip,
                             embeddings=Embeddings.from_options(options))
    except (PromptTooLongError, EmbeddingError) as exc:
        raise NodeInputError("text", str(exc)) from None


def _prompt_preflight(values, ctx):
    """A prompt within the length limit (nodes._limits) whose embeddings exist."""
    from nodes._limits import prompt_problem
    from nodes.lib.embeddings import prompt_problem as embedding_problem

    why = prompt_problem(values.get("text")) or embedding_problem(values.get("text"),
                                                                  ctx.options)
    if why is not None:
        yield "text", why


def _prompt_identity(values, ctx):
    """The embedding files the prompt names (their content is part of the result)."""
    from nodes.lib.embeddings import prompt_identity

    return prompt_identity(values.get("text"), ctx.options)


@node("conditioning.text_encode", title="Text Encoder", category="conditioning",
      version="1.0.0", outputs=[Output("conditioning", CONDITIONING)])
class TextEncode:
    """Encode a prompt with the checkpoint's text encoder(s) (SDXL: both, with the pooled
    embedding). An unweighted prompt under 77 tokens gives exactly diffusers' embeddings."""

    clip = Input(CLIP)
    text = Input(STRING, default="", multiline=True, description=_PROMPT_HELP)
    clip_skip = Input(INT, default=1, min=1, max=12,
                      description="1 = last layer, 2 = penultimate (as in A1111); SDXL counts "
                                  "from its usual penultimate layer")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: a prompt within the length limit whose embeddings exist."""
        yield from _prompt_preflight(values, ctx)

    @classmethod
    def cache_identity(cls, values, ctx):
        return _prompt_identity(values, ctx)

    def run(self, ctx: RunContext):
        from nodes.lib.prompts import encode_prompt

        return _encode(encode_prompt, self.clip, self.text, self.clip_skip, ctx.options)


@node("conditioning.negative_prompt", title="Negative Prompt", category="conditioning",
      version="1.0.0", outputs=[Output("conditioning", CONDITIONING)])
class NegativePrompt:
    """The unconditional side of guidance. Empty on SDXL base gives all-zero embeddings, as
    diffusers' StableDiffusionXLPipeline does without a negative prompt
    (force_zeros_for_empty_prompt); elsewhere the empty prompt is encoded."""

    clip = Input(CLIP)
    text = Input(STRING, default="", multiline=True, description=_PROMPT_HELP)
    clip_skip = Input(INT, default=1, min=1, max=12,
                      description="1 = last layer, 2 = penultimate (as in A1111)")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: a prompt within the length limit whose embeddings exist."""
        yield from _prompt_preflight(values, ctx)

    @classmethod
    def cache_identity(cls, values, ctx):
        return _prompt_identity(values, ctx)

    def run(self, ctx: RunContext):
        from nodes.lib.prompts import encode_prompt, zero_conditioning

        cond = _encode(encode_prompt, self.clip, self.text, self.clip_skip, ctx.options)
        if not self.text.strip() and getattr(self.clip, "force_zeros_for_empty_prompt", False):
            return zero_conditioning(self.clip, like=cond)
        return cond


@node("conditioning.sdxl", title="SDXL Conditioning", category="conditioning", version="1.0.0",
      outputs=[Output("conditioning", CONDITIONING)])
class SDXLConditioning:
    """SDXL micro-conditioning: the size the image 'was' (original), the crop, the target size,
    and for the refiner the aesthetic score. Sizes of 0 (and, without this node, everything)
    fall back to diffusers' defaults: original = target = the generated image's size, crop
    (0, 0), aesthetic score 6.0 for a prompt and 2.5 for a negative prompt."""

    conditioning = Input(CONDITIONING)
    original_width = Input(INT, default=0, min=0, max=16384, step=8,
                           description="0: the image width")
    original_height = Input(INT, default=0, min=0, max=16384, step=8,
                            description="0: the image height")
    crop_left = Input(INT, default=0, min=0, max=16384, step=8)
    crop_top = Input(INT, default=0, min=0, max=16384, step=8)
    target_width = Input(INT, default=0, min=0, max=16384, step=8,
                         description="0: the image width")
    target_height = Input(INT, default=0, min=0, max=16384, step=8,
                          description="0: the image height")
    aesthetic_score = Input(FLOAT, default=-1.0, min=-1.0, max=10.0, step=0.5,
                            description="refiner only; -1: 6.0 for a prompt, 2.5 for a "
                                        "negative prompt (diffusers' defaults)")

    def run(self, ctx: RunContext):
        from nodes.lib.prompts import with_sdxl_extra

        return with_sdxl_extra(
            self.conditioning,
            original_size=(self.original_height, self.original_width),
            crops_coords_top_left=(self.crop_top, self.crop_left),
            target_size=(self.target_height, self.target_width),
            aesthetic_score=self.aesthetic_score if self.aesthetic_score >= 0 else None)
