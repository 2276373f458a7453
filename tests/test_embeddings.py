"""Textual inversion: `embedding:name` in a prompt gives diffusers' `load_textual_inversion`
images, without changing the shared tokenizer or text encoder.

Embedding files are written by the tests in the layouts people download (A1111 `.pt` with
string_to_param, A1111 `.safetensors` with emb_params, diffusers learned_embeds, SDXL clip_l /
clip_g pairs) into an `embeddings/` folder next to the workflow, or a folder named by
LOOM_EMBEDDINGS_DIR / the `embeddings_dir` run option. Images are compared within 1e-4 on tiny
random SD and SDXL models; weighted embeddings against Loom's own weighting rule (diffusers has
no weight syntax); the lookup, the errors and the cache's view of embedding files are checked
on their own.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests import lora_fixtures as lx  # noqa: E402
from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import (  # noqa: E402
    as_image,
    assert_close,
    generator,
    run_loom,
    txt2img_nodes,
    use_scheduler,
)

SCHEDULER = "ddim"
WIDTH = 32  # the tiny text encoders' width


one_torch_thread = fx.one_torch_thread  # fixtures shared with the other equality tests
sess = fx.sess


@pytest.fixture(autouse=True)
def _no_user_folder(monkeypatch, tmp_path):
    """Embeddings only from the folders a test names (never the user's own)."""
    monkeypatch.setenv("LOOM_EMBEDDINGS_DIR", str(tmp_path / "no-such-folder"))


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return fx.build_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def sdxl_folder(tmp_path_factory):
    """SDXL with its text encoders' eos_token_id set to <|endoftext|> (49407): with the legacy
    value 2 that SDXL's configs carry, transformers pools at the highest token id, which after
    load_textual_inversion is the embedding's added token, not <eos> (Loom pools at <eos>)."""
    folder = fx.build_sdxl(tmp_path_factory.mktemp("sdxl"))
    for sub in ("text_encoder", "text_encoder_2"):
        cfg_file = folder / sub / "config.json"
        cfg = json.loads(cfg_file.read_text())
        cfg["eos_token_id"] = 49407
        cfg_file.write_text(json.dumps(cfg))
    return folder


def embeddings_dir(tmp_path: Path) -> Path:
    d = tmp_path / "embeddings"
    d.mkdir(parents=True, exist_ok=True)
    return d


def sd_reference(folder: Path, prompt: str, negative: str, loads: list[tuple]) -> torch.Tensor:
    from diffusers import StableDiffusionPipeline

    pipe = use_scheduler(StableDiffusionPipeline.from_pretrained(folder), SCHEDULER)
    for path, token in loads:
        pipe.load_textual_inversion(str(path), token=token)
    images = pipe(prompt, negative_prompt=negative, num_inference_steps=3, guidance_scale=7.0,
                  height=64, width=64, generator=generator(), output_type="np").images
    return as_image(images)


def loom(sess, tmp_path: Path, folder: Path, prompt: str, negative: str = "",
         family: str = "sd1") -> torch.Tensor:
    nodes = txt2img_nodes(folder, SCHEDULER, negative=negative, family=family)
    nodes["pos"]["text"] = prompt
    return run_loom(sess, tmp_path, nodes)


# ---- the proof: equal to diffusers ---------------------------------------------------------


def test_sd_a1111_pt_multi_vector_in_prompt_and_negative(sess, sd_folder, tmp_path):
    d = embeddings_dir(tmp_path)
    ink = lx.write_a1111_pt(d / "ink.pt", lx.random_vectors(3, WIDTH, seed=1), "ink")
    blur = lx.write_a1111_safetensors(d / "blurry.safetensors",
                                      lx.random_vectors(2, WIDTH, seed=2))
    got = loom(sess, tmp_path, sd_folder, "a photo of embedding:ink on a table",
               negative="embedding:blurry, dark")
    ref = sd_reference(sd_folder, "a photo of <ink> on a table", "<blurry>, dark",
                       [(ink, "<ink>"), (blur, "<blurry>")])
    assert_close(got, ref, "sd A1111 .pt (3 vectors) + .safetensors emb_params in the negative")
    plain = loom(sess, tmp_path / "plain", sd_folder, "a photo of on a table", negative="dark")
    assert (got - plain).abs().max() > 1e-2  # the embedding changed the picture


def test_sd_learned_embeds_by_bare_file_name(sess, sd_folder, tmp_path):
    d = embeddings_dir(tmp_path)
    path = lx.write_learned_embeds(d / "CatToy.bin", "<cat-toy>",
                                   lx.random_vectors(1, WIDTH, seed=3)[0])
    got = loom(sess, tmp_path, sd_folder, "a cattoy backpack")  # A1111: the bare file name
    ref = sd_reference(sd_folder, "a <cat-toy> backpack", "", [(path, "<cat-toy>")])
    assert_close(got, ref, "sd diffusers learned_embeds (.bin), bare A1111 name")


def test_sdxl_clip_l_clip_g_pair(sess, sdxl_folder, tmp_path):
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import load_file

    d = embeddings_dir(tmp_path)
    path = lx.write_sdxl_embedding(d / "xlstyle.safetensors",
                                   lx.random_vectors(2, WIDTH, seed=4),
                                   lx.random_vectors(2, WIDTH, seed=5))
    got = loom(sess, tmp_path, sdxl_folder, "a embedding:xlstyle red circle",
               negative="embedding:xlstyle", family="sdxl")
    pipe = use_scheduler(StableDiffusionXLPipeline.from_pretrained(sdxl_folder), SCHEDULER)
    state = load_file(str(path))
    pipe.load_textual_inversion(state["clip_l"], token="<xl>", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)
    pipe.load_textual_inversion(state["clip_g"], token="<xl>",
                                text_encoder=pipe.text_encoder_2, tokenizer=pipe.tokenizer_2)
    ref = pipe("a <xl> red circle", negative_prompt="<xl>", num_inference_steps=3,
               guidance_scale=7.0, height=64, width=64, generator=generator(),
               output_type="np").images
    assert_close(got, as_image(ref), "sdxl clip_l + clip_g embedding")


# ---- weights, chunks, the shared models ------------------------------------------------------


@pytest.fixture(scope="module")
def clip(sd_folder):
    from nodes.lib.checkpoints import load_checkpoint

    return load_checkpoint(sd_folder, device="cpu", components=("clip",)).clip


def test_weighted_embedding_follows_the_weighting_rule(clip, tmp_path):
    from nodes.lib.embeddings import Embeddings
    from nodes.lib.prompts import _apply_weights, encode_prompt

    d = embeddings_dir(tmp_path)
    lx.write_a1111_pt(d / "ink.pt", lx.random_vectors(3, WIDTH, seed=6))
    emb = Embeddings([d])
    plain = encode_prompt(clip, "a photo of embedding:ink", embeddings=emb).embeds
    weighted = encode_prompt(clip, "a photo of (embedding:ink:1.3)", embeddings=emb).embeds
    n_words = len(clip.tokenizers[0]("a photo of", add_special_tokens=False).input_ids)
    weights = [1.0] * 77
    for i in range(1 + n_words, 1 + n_words + 3):
        weights[i] = 1.3
    expected = _apply_weights(plain, weights)
    assert torch.allclose(weighted, expected, atol=1e-6)
    assert not torch.allclose(weighted, plain, atol=1e-3)


def test_the_shared_tokenizer_and_encoder_do_not_change(clip, tmp_path):
    from nodes.lib.embeddings import Embeddings
    from nodes.lib.prompts import encode_prompt

    d = embeddings_dir(tmp_path)
    lx.write_a1111_pt(d / "ink.pt", lx.random_vectors(2, WIDTH, seed=7))
    tok, enc = clip.tokenizers[0], clip.text_encoders[0]
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    n_tokens = len(tok)
    without = encode_prompt(clip, "a photo of ink").embeds
    encode_prompt(clip, "a photo of embedding:ink", embeddings=Embeddings([d]))
    assert len(tok) == n_tokens and "ink" not in tok.get_added_vocab()
    assert not enc.get_input_embeddings()._forward_hooks  # the hook was for one call
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items())
    assert torch.equal(encode_prompt(clip, "a photo of ink").embeds, without)


def test_an_embedding_stays_in_one_chunk():
    from nodes.lib.embeddings import EmbeddingRef
    from nodes.lib.prompts import tokenize

    class Fake:
        def split(self, text):
            return [p if p != "E" else EmbeddingRef("e", Path("e.pt")) for p in
                    text.replace("E", "|E|").split("|")]

        def vectors(self, ref):
            return torch.ones(3, WIDTH)

    chunks = tokenize(fx.tokenizer(), "a " * 74 + "E end", Fake())
    assert len(chunks.ids) == 2
    assert len(chunks.injected[0]) == 0 and sorted(chunks.injected[1]) == [1, 2, 3]
    assert chunks.ids[1][1:5] == [0, 0, 0, chunks.ids[1][4]] and chunks.ids[0][75] == 49407


# ---- finding files, errors ---------------------------------------------------------------


def test_lookup_order_subfolders_suffixes_and_case(tmp_path, monkeypatch):
    from nodes.lib.embeddings import EmbeddingRef, Embeddings, embedding_folders

    wf, env, opt = tmp_path / "wf", tmp_path / "env", tmp_path / "opt"
    for folder in (wf / "embeddings" / "styles", env, opt):
        folder.mkdir(parents=True)
    v = lx.random_vectors(1, WIDTH)
    lx.write_a1111_pt(wf / "embeddings" / "ink.pt", v)
    lx.write_a1111_pt(env / "ink.pt", v)
    lx.write_a1111_pt(env / "Moody.pt", v)
    lx.write_a1111_safetensors(wf / "embeddings" / "styles" / "Neon.safetensors", v)
    monkeypatch.setenv("LOOM_EMBEDDINGS_DIR", f"{env}{os.pathsep}{tmp_path / 'missing'}")
    folders = embedding_folders({"base_dir": str(wf), "embeddings_dir": str(opt)})
    assert folders == [opt, wf / "embeddings", env, tmp_path / "missing"]
    emb = Embeddings(folders)
    assert emb.find("ink") == wf / "embeddings" / "ink.pt"  # the workflow's folder first
    assert emb.find("ink.pt") == wf / "embeddings" / "ink.pt"
    assert emb.find("styles/Neon") == emb.find("neon") == \
        wf / "embeddings" / "styles" / "Neon.safetensors"
    assert emb.find("nothing") is None
    pieces = emb.split("x embedding:neon. and moody, MOODY; notmoody")
    refs = [p for p in pieces if isinstance(p, EmbeddingRef)]
    assert [r.name for r in refs] == ["neon", "moody", "MOODY"]
    assert "".join(p if isinstance(p, str) else "#" for p in pieces) == \
        "x #. and #, #; notmoody"
    monkeypatch.delenv("LOOM_EMBEDDINGS_DIR")  # then: the model library's (engine.library)
    monkeypatch.setenv("LOOM_MODELS_DIR", str(tmp_path / "models"))
    assert embedding_folders({})[-1] == tmp_path / "models" / "embeddings"


def test_unknown_embedding_is_a_preflight_problem(sess, sd_folder, tmp_path):
    from engine.errors import ValidationError

    nodes = txt2img_nodes(sd_folder, SCHEDULER)
    nodes["pos"]["text"] = "a photo of embedding:nowhere"
    tmp_path.mkdir(exist_ok=True)
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", nodes))
    with pytest.raises(ValidationError) as info:
        sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    problem = next(p for p in info.value.problems if p.node_id == "pos")
    assert problem.input == "text" and "embedding 'nowhere' not found" in problem.message
    assert str(tmp_path / "embeddings") in problem.message


def test_embeddings_for_another_model_are_errors(clip, tmp_path):
    from nodes.lib.embeddings import EmbeddingError, Embeddings
    from nodes.lib.prompts import encode_prompt

    d = embeddings_dir(tmp_path)
    lx.write_a1111_pt(d / "wide.pt", lx.random_vectors(1, 768))
    lx.write_sdxl_embedding(d / "xl.safetensors", lx.random_vectors(1, 768),
                            lx.random_vectors(1, 1280))
    torch.save({"string_to_param": {"*": torch.zeros(1, WIDTH)}, "when": time.gmtime()},
               str(d / "unsafe.pt"))  # a struct_time: not plain data
    emb = Embeddings([d])
    for name, words in (("wide", "width 768"), ("xl", "SDXL embedding"),
                        ("unsafe", "cannot be read safely")):
        with pytest.raises(EmbeddingError, match=words):
            encode_prompt(clip, f"embedding:{name}", embeddings=emb)


def test_the_cache_follows_the_embedding_files(sess, sd_folder, tmp_path):
    d = embeddings_dir(tmp_path)
    path = lx.write_a1111_pt(d / "ink.pt", lx.random_vectors(2, WIDTH, seed=8))
    nodes = txt2img_nodes(sd_folder, SCHEDULER, negative="dark")
    nodes["pos"]["text"] = "a photo of embedding:ink"
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", nodes))

    def run():
        r = sess.run(graph, output_dir=tmp_path / "out", device="cpu")
        assert r.ok, r.errors
        return r

    first = run()
    assert "pos" in first.ran
    lx.write_a1111_pt(d / "other.pt", lx.random_vectors(2, WIDTH, seed=9))
    assert run().ran == []  # a file the prompt does not name changes nothing
    time.sleep(0.01)
    lx.write_a1111_pt(path, lx.random_vectors(2, WIDTH, seed=10))  # the named file changes
    again = run()
    assert {"pos", "cfg", "sampler", "decode", "save"} <= set(again.ran)
    assert "neg" not in again.ran and "unet" not in again.ran
    assert (again.output("decode", "image") - first.output("decode", "image")).abs().max() > 1e-3


def test_example_workflow_runs_with_its_embeddings(sess, sd_folder, tmp_path):
    """resources/workflows/examples/sd15_embeddings.json names two embeddings (one weighted,
    one in the negative prompt); with them in the embeddings folder it runs."""
    path = fx.ROOT / "resources" / "workflows" / "examples" / "sd15_embeddings.json"
    d = embeddings_dir(tmp_path)
    lx.write_a1111_pt(d / "flat-style.pt", lx.random_vectors(2, WIDTH, seed=11))
    lx.write_sdxl_embedding(d / "bad-quality.safetensors", lx.random_vectors(1, WIDTH),
                            lx.random_vectors(1, 64))  # a pair: SD takes the clip_l width
    graph = sess.load(path)
    for target, value in (("checkpoint.path", str(sd_folder)), ("noise.width", 64),
                          ("noise.height", 64), ("scheduler.steps", 2)):
        sess.set(graph, target, value)
    result = sess.run(graph, output_dir=tmp_path / "out", device="cpu",
                      options={"embeddings_dir": str(d)})
    assert result.ok, {k: e.message for k, e in result.errors.items()}
    assert len(result.files) == 1


def test_builtin_example_embedding_is_its_words(tmp_path):
    """resources/workflows/builtin/embedding.json runs with no download: its embedding (next
    to it, in embeddings/) holds the built-in text encoder's vectors for "red star", so the
    images are exactly those of the words (the embedding path end to end on a trained model)."""
    from engine.api import Session

    s = Session()
    g = s.load(fx.ROOT / "resources" / "workflows" / "builtin" / "embedding.json")
    g.set_value("noise", "batch", 1)
    r = s.run(g, output_dir=tmp_path / "a", device="cpu")
    assert r.ok, r.errors
    g.set_value("prompt", "text", "a large red star on a white background")
    words = s.run(g, output_dir=tmp_path / "b", device="cpu")
    assert words.ok and "prompt" in words.ran
    assert torch.equal(r.output("decode", "image"), words.output("decode", "image"))
