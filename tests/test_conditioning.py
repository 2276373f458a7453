"""Prompt weighting syntax, and text encoding equal to diffusers' pipelines' `encode_prompt`."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

from nodes.lib.prompts import parse_prompt  # noqa: E402


def frags(text):
    return [(f.text, round(f.weight, 6), f.is_break) for f in parse_prompt(text)]


# ---- the parser (no torch) --------------------------------------------------------------------


def test_plain_prompt_is_one_fragment():
    assert frags("a photo of a cat, 4k") == [("a photo of a cat, 4k", 1.0, False)]
    assert frags("") == []


def test_round_square_and_explicit_weights():
    assert frags("a (red) car") == [("a ", 1.0, False), ("red", 1.1, False), (" car", 1.0, False)]
    assert frags("a [red] car") == [("a ", 1.0, False), ("red", round(1 / 1.1, 6), False),
                                    (" car", 1.0, False)]
    assert frags("(red:1.5) car") == [("red", 1.5, False), (" car", 1.0, False)]
    assert frags("(red: 0.25 )") == [("red", 0.25, False)]
    assert frags("((x))") == [("x", 1.21, False)]
    assert frags("[[x]]") == [("x", round(1 / 1.21, 6), False)]


def test_nesting_multiplies():
    assert frags("(a (b:2) c:0.5) d") == [("a ", 0.5, False), ("b", 1.0, False),
                                           (" c", 0.5, False), (" d", 1.0, False)]
    assert frags("((a) [b])") == [("a", 1.21, False), (" ", 1.1, False), ("b", 1.0, False)]


def test_escapes_are_literal():
    assert frags(r"\(literal\) \[x\] a\\b") == [(r"(literal) [x] a\b", 1.0, False)]
    assert frags(r"(\(x\):1.2)") == [("(x)", 1.2, False)]


def test_unbalanced_brackets_like_a1111():
    assert frags("a (unclosed") == [("a ", 1.0, False), ("unclosed", 1.1, False)]
    assert frags("stray) text]") == [("stray) text]", 1.0, False)]
    assert frags("ratio 16:9 (x:1.3)") == [("ratio 16:9 ", 1.0, False), ("x", 1.3, False)]


def test_break_keyword():
    assert frags("a cat BREAK a dog") == [("a cat", 1.0, False), ("", 1.0, True),
                                          ("a dog", 1.0, False)]
    assert frags("BREAKFAST") == [("BREAKFAST", 1.0, False)]


def test_tokenize_plain_equals_pipeline_tokenization():
    from transformers import CLIPTokenizer

    from nodes.lib.checkpoints import TOKENIZER_DIR
    from nodes.lib.prompts import tokenize

    tok = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR))
    text = "a photograph of an astronaut riding a horse"
    chunks = tokenize(tok, text)
    assert chunks.plain and len(chunks.ids) == 1
    assert chunks.ids[0] == tok(text, padding="max_length", max_length=77,
                                truncation=True).input_ids
    weighted = tokenize(tok, "a photograph of an (astronaut:1.5) riding a horse")
    assert weighted.ids == chunks.ids  # brackets do not become tokens
    assert weighted.weights[0][5] == 1.5 and weighted.weights[0][4] == 1.0
    long = tokenize(tok, "horse " * 100)
    assert len(long.ids) == 2 and all(len(r) == 77 for r in long.ids)
    assert long.ids[0][0] == 49406 and long.ids[0][76] == 49407 and long.ids[1][26] == 49407


# ---- encoding vs diffusers --------------------------------------------------------------------

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def sd1(tmp_path_factory):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager
    from tests.helpers.tiny_models import load_pipeline, make_sd_folder

    folder = make_sd_folder(tmp_path_factory.mktemp("sd1") / "sd1")
    return load_pipeline(folder), load_checkpoint(folder, models=ModelManager(), device="cpu")


@pytest.fixture(scope="module")
def sd2(tmp_path_factory):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager
    from tests.helpers.tiny_models import load_pipeline, make_sd_folder

    folder = make_sd_folder(tmp_path_factory.mktemp("sd2") / "sd2", family="sd2",
                            prediction_type="v_prediction")
    return load_pipeline(folder), load_checkpoint(folder, models=ModelManager(), device="cpu")


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager
    from tests.helpers.tiny_models import load_pipeline, make_sdxl_folder

    folder = make_sdxl_folder(tmp_path_factory.mktemp("sdxl") / "sdxl")
    return load_pipeline(folder), load_checkpoint(folder, models=ModelManager(), device="cpu")


@pytest.fixture(scope="module")
def refiner(tmp_path_factory):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager
    from tests.helpers.tiny_models import load_pipeline, make_sdxl_folder

    folder = make_sdxl_folder(tmp_path_factory.mktemp("ref") / "ref", refiner=True)
    return load_pipeline(folder), load_checkpoint(folder, models=ModelManager(), device="cpu")


PROMPT = "a photograph of an astronaut riding a horse"
NEGATIVE = "blurry, low quality"


def _run(node_cls, **inputs):
    from engine.node import RunContext

    node = node_cls()
    for k, v in inputs.items():
        setattr(node, k, v)
    ctx = RunContext("n", "t", {"device": "cpu"}, lambda *a: None, lambda: False)
    return node.run(ctx)


@pytest.mark.parametrize("fixture", ["sd1", "sd2"])
def test_sd_text_encode_equals_diffusers(fixture, request):
    from nodes.conditioning import NegativePrompt, TextEncode

    pipe, loaded = request.getfixturevalue(fixture)
    with torch.no_grad():
        ref_pos, ref_neg = pipe.encode_prompt(PROMPT, "cpu", 1, True, NEGATIVE)
        _, ref_empty = pipe.encode_prompt(PROMPT, "cpu", 1, True, None)
    pos = _run(TextEncode, clip=loaded.clip, text=PROMPT, clip_skip=1)
    neg = _run(NegativePrompt, clip=loaded.clip, text=NEGATIVE, clip_skip=1)
    empty = _run(NegativePrompt, clip=loaded.clip, text="", clip_skip=1)
    assert pos.embeds.shape == (1, 77, 32) and pos.pooled is None
    assert torch.equal(pos.embeds, ref_pos)
    assert torch.equal(neg.embeds, ref_neg)
    assert torch.equal(empty.embeds, ref_empty)  # SD encodes the empty prompt, no zeros


def test_sd_clip_skip_2_is_diffusers_clip_skip_1(sd1):
    """A1111's clip skip 2 = diffusers' clip_skip=1: the penultimate layer, then the final
    layer norm. diffusers' own clip_skip path reads `text_encoder.text_model`, which the
    installed transformers no longer has, so the reference repeats its two lines here."""
    from nodes.lib.prompts import encode_prompt

    pipe, loaded = sd1
    tok, enc = pipe.tokenizer, pipe.text_encoder
    ids = tok(PROMPT, padding="max_length", max_length=77, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = enc(ids, output_hidden_states=True).hidden_states[-(1 + 1)]
        ref = getattr(enc, "text_model", enc).final_layer_norm(hidden)
        last = encode_prompt(loaded.clip, PROMPT, clip_skip=1).embeds
    skip2 = encode_prompt(loaded.clip, PROMPT, clip_skip=2).embeds
    assert torch.equal(skip2, ref)
    assert not torch.allclose(skip2, last)


def test_sdxl_encode_equals_diffusers_with_zero_empty_negative(sdxl):
    from nodes.conditioning import NegativePrompt, TextEncode

    pipe, loaded = sdxl
    assert loaded.clip.force_zeros_for_empty_prompt
    with torch.no_grad():
        ref_pos, ref_neg, ref_pooled, ref_neg_pooled = pipe.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=None)
        _, ref_neg2, _, ref_neg2_pooled = pipe.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=NEGATIVE)
    pos = _run(TextEncode, clip=loaded.clip, text=PROMPT, clip_skip=1)
    empty = _run(NegativePrompt, clip=loaded.clip, text="", clip_skip=1)
    neg = _run(NegativePrompt, clip=loaded.clip, text=NEGATIVE, clip_skip=1)
    assert pos.embeds.shape == (1, 77, 64) and pos.pooled.shape == (1, 32)
    assert torch.equal(pos.embeds, ref_pos) and torch.equal(pos.pooled, ref_pooled)
    assert torch.count_nonzero(ref_neg) == 0  # diffusers' force_zeros_for_empty_prompt
    assert torch.equal(empty.embeds, ref_neg) and torch.equal(empty.pooled, ref_neg_pooled)
    assert torch.equal(neg.embeds, ref_neg2) and torch.equal(neg.pooled, ref_neg2_pooled)


def test_sdxl_refiner_encode_equals_diffusers(refiner):
    from nodes.conditioning import NegativePrompt, TextEncode

    pipe, loaded = refiner
    assert not loaded.clip.force_zeros_for_empty_prompt
    with torch.no_grad():
        ref_pos, ref_neg, ref_pooled, ref_neg_pooled = pipe.encode_prompt(
            PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True,
            negative_prompt=None)
    pos = _run(TextEncode, clip=loaded.clip, text=PROMPT, clip_skip=1)
    empty = _run(NegativePrompt, clip=loaded.clip, text="", clip_skip=1)
    assert pos.embeds.shape == (1, 77, 32)
    assert torch.equal(pos.embeds, ref_pos) and torch.equal(pos.pooled, ref_pooled)
    assert torch.equal(empty.embeds, ref_neg) and torch.equal(empty.pooled, ref_neg_pooled)


def test_long_prompt_is_chunked(sd1, sdxl):
    from nodes.lib.prompts import encode_prompt, encode_with

    long = ", ".join(["a very detailed photograph of a horse"] * 12)  # ~ 95 tokens
    _, loaded = sd1
    cond = encode_prompt(loaded.clip, long)
    assert cond.embeds.shape == (1, 154, 32)
    tok = loaded.clip.tokenizers[0]
    ids = tok(long, add_special_tokens=False).input_ids
    assert 75 < len(ids) <= 150
    # each chunk is an ordinary 77-token encoding of its 75 tokens
    first = tok.decode(ids[:75])
    alone = encode_with(tok, loaded.clip.text_encoders[0], first, "sd1").embeds
    assert torch.allclose(cond.embeds[:, :77], alone, atol=1e-6)
    _, xl = sdxl
    cond = encode_prompt(xl.clip, long)
    assert cond.embeds.shape == (1, 154, 64) and cond.pooled.shape == (1, 32)


def test_weights_change_only_weighted_tokens_direction(sd1):
    from nodes.lib.prompts import encode_prompt

    _, loaded = sd1
    plain = encode_prompt(loaded.clip, PROMPT).embeds
    weighted = encode_prompt(loaded.clip, "a photograph of an (astronaut:1.5) riding a horse")
    w = weighted.embeds
    assert w.shape == plain.shape
    assert torch.allclose(w.mean(), plain.mean(), atol=1e-6)  # the mean is restored
    ratio = w[0, 5] / plain[0, 5]  # token 5 = "astronaut" (after <bos> a photograph of an)
    other = w[0, 2] / plain[0, 2]
    assert torch.allclose(ratio / other, torch.full_like(ratio, 1.5), rtol=1e-4)
    same = encode_prompt(loaded.clip, "a photograph of an (astronaut:1.0) riding a horse")
    assert torch.equal(same.embeds, plain)


def test_sdxl_conditioning_node(sdxl):
    from nodes.conditioning import SDXLConditioning, TextEncode

    _, loaded = sdxl
    pos = _run(TextEncode, clip=loaded.clip, text=PROMPT, clip_skip=1)
    assert pos.extra == {}  # without the node the sampler uses the image size, as diffusers
    out = _run(SDXLConditioning, conditioning=pos, original_width=1024, original_height=768,
               crop_left=16, crop_top=8, target_width=512, target_height=256,
               aesthetic_score=-1.0)
    assert out.extra == {"original_size": (768, 1024), "crops_coords_top_left": (8, 16),
                         "target_size": (256, 512)}
    assert out.embeds is pos.embeds and pos.extra == {}
    out = _run(SDXLConditioning, conditioning=pos, original_width=0, original_height=0,
               crop_left=0, crop_top=0, target_width=0, target_height=0, aesthetic_score=7.5)
    assert out.extra == {"aesthetic_score": 7.5}
