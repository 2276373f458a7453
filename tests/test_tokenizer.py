"""Loom's bundled CLIP tokenizer files (resources/tokenizers/clip) give the reference token ids.

References: known ids of Stable Diffusion prompts; transformers' CLIPTokenizer over the same
files (the class diffusers' pipelines use); and open_clip's own SimpleTokenizer, which reads
CLIP's original BPE merges list, loaded from the installed package's tokenizer.py directly
(the open_clip package itself needs torchvision; ftfy, its text fixer, is not installed and is
replaced by an identity function, which is what it is for the clean ASCII strings used here)."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER_DIR = ROOT / "resources" / "tokenizers" / "clip"

STRINGS = [
    "a photograph of an astronaut riding a horse",
    "A Photograph Of An Astronaut Riding A Horse!",
    "",
    "masterpiece, best quality, 1girl, solo, looking at viewer, (red hair:1.2)",
    "a cat's toy isn't what we'd've expected; they're 100% sure",
    "portrait of a cyberpunk samurai, neon lights, 8k, octane render, trending on artstation",
    "a red car   with  many    spaces\tand\ttabs\nand newlines",
    "emoji 🙂 and symbols #hashtag @user $5 & <html>",
    "numbers 12345 and 3.14159 and -42",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "<|startoftext|> inside text <|endoftext|>",
    "hyphen-ated words, under_scores and CamelCase",
]

KNOWN = {
    "a photograph of an astronaut riding a horse":
        [49406, 320, 8853, 539, 550, 18376, 6765, 320, 4558, 49407],
    "": [49406, 49407],
}


@pytest.fixture(scope="module")
def hf_tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), local_files_only=True)


@pytest.fixture(scope="module")
def open_clip_tokenizer():
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "tokenizer.py"
    if "ftfy" not in sys.modules:
        try:
            import ftfy  # noqa: F401
        except ImportError:
            stub = types.ModuleType("ftfy")
            stub.fix_text = lambda text: text  # type: ignore[attr-defined]
            sys.modules["ftfy"] = stub
    mod_spec = importlib.util.spec_from_file_location("_open_clip_tokenizer", path)
    mod = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(mod)  # type: ignore[union-attr]
    except Exception as exc:  # pragma: no cover - depends on the installed version
        pytest.skip(f"open_clip's tokenizer.py cannot be loaded on its own: {exc}")
    return mod.SimpleTokenizer()


def test_known_ids(hf_tokenizer):
    for text, ids in KNOWN.items():
        assert hf_tokenizer(text).input_ids == ids


def test_vocab_size_and_specials(hf_tokenizer):
    assert len(hf_tokenizer) == 49408
    assert hf_tokenizer.bos_token_id == 49406
    assert hf_tokenizer.eos_token_id == 49407
    assert hf_tokenizer.pad_token_id == 49407
    assert hf_tokenizer.model_max_length == 77


def test_padding_as_pipelines_do(hf_tokenizer):
    ids = hf_tokenizer("a horse", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[:4] == [49406, 320, 4558, 49407] and ids[4:] == [49407] * 73
    from transformers import CLIPTokenizer

    bang = CLIPTokenizer.from_pretrained(str(TOKENIZER_DIR), pad_token="!")  # SD2 / SDXL 2nd
    ids = bang("a horse", padding="max_length", max_length=77, truncation=True).input_ids
    assert ids[:4] == [49406, 320, 4558, 49407] and ids[4:] == [0] * 73


@pytest.mark.parametrize("text", STRINGS)
def test_same_ids_as_open_clip(text, open_clip_tokenizer, hf_tokenizer):
    if "<|" in text:
        pytest.skip("open_clip names its special tokens differently")
    ref = [49406, *open_clip_tokenizer.encode(text), 49407]
    assert hf_tokenizer(text).input_ids == ref


def test_html_entities_differ_between_references(open_clip_tokenizer, hf_tokenizer):
    """The one known difference: open_clip un-escapes HTML entities, transformers' tokenizer
    (which diffusers' pipelines, and so Loom, use) keeps them as text."""
    ref = [49406, *open_clip_tokenizer.encode("a &amp; b"), 49407]
    assert ref == hf_tokenizer("a & b").input_ids
    assert hf_tokenizer("a &amp; b").input_ids == [49406, 320, 261, 6259, 282, 321, 49407]


def test_open_clip_reference_known_ids(open_clip_tokenizer):
    text = "a photograph of an astronaut riding a horse"
    assert [49406, *open_clip_tokenizer.encode(text), 49407] == KNOWN[text]


def test_vocab_matches_open_clip_bpe(open_clip_tokenizer, hf_tokenizer):
    """Every entry of the bundled vocab.json is open_clip's, id for id (bar the special-token
    names, which open_clip spells <start_of_text> / <end_of_text>)."""
    vocab = hf_tokenizer.get_vocab()
    ref = dict(open_clip_tokenizer.encoder)
    ref["<|startoftext|>"] = ref.pop("<start_of_text>")
    ref["<|endoftext|>"] = ref.pop("<end_of_text>")
    assert vocab == ref


def test_truncation_to_77(hf_tokenizer):
    ids = hf_tokenizer("word " * 200, padding="max_length", max_length=77,
                       truncation=True).input_ids
    assert len(ids) == 77 and ids[0] == 49406 and ids[-1] == 49407
