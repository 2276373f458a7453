"""Load LoRA: the proof that it gives diffusers' images, and that it never changes the base model.

Tiny random SD and SDXL models (tests.sampling_fixtures) get random low-rank layers written as
kohya / A1111 files (LoCon convolutions included; SDXL with the original UNet's block names), as
diffusers / PEFT files (with diffusers' adapter metadata and without it) and chained; each Loom
image is compared with diffusers' `load_lora_weights` both unfused (adapter scales) and fused
(`fuse_lora`), within 1e-4. Then: strength 0 and removal are the base weights bit for bit after
many strength changes, the cache re-runs only what a strength feeds (exact run counts), a patched
model evicted from the model manager is rebuilt the same, and files that cannot apply are errors
that say why.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests import lora_fixtures as lx  # noqa: E402
from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import (  # noqa: E402
    PROMPT,
    as_image,
    assert_close,
    generator,
    link,
    run_loom,
    txt2img_nodes,
    use_scheduler,
)

SCHEDULER = "ddim"
UNET_SD = lx.ATTENTION + ("proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1")


one_torch_thread = fx.one_torch_thread  # fixtures shared with the other equality tests
sess = fx.sess


@pytest.fixture(scope="module")
def peft():
    import peft  # noqa: F401  (diffusers' load_lora_weights needs the PEFT backend)

    return peft


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    """A tiny SD folder and its modules (for the LoRA layers' shapes)."""
    from diffusers import StableDiffusionPipeline

    folder = fx.build_sd(tmp_path_factory.mktemp("sd"))
    pipe = StableDiffusionPipeline.from_pretrained(folder)
    return folder, pipe.unet, pipe.text_encoder


@pytest.fixture(scope="module")
def sdxl(tmp_path_factory):
    from diffusers import StableDiffusionXLPipeline

    folder = fx.build_sdxl(tmp_path_factory.mktemp("sdxl"))
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    return folder, pipe.unet, pipe.text_encoder, pipe.text_encoder_2


@pytest.fixture(scope="module")
def files(sd, tmp_path_factory):
    """The SD LoRA files: kohya (LoCon convolutions, all text-encoder projections) and two
    diffusers / PEFT ones (metadata with an alpha pattern; none, text_model. prefixes)."""
    _, unet, te = sd
    d = tmp_path_factory.mktemp("loras")
    kohya = lx.write_kohya(d / "kohya.safetensors", lx.random_layers(unet, UNET_SD, seed=1),
                           {"lora_te": lx.random_layers(te, lx.TE_ALL, seed=2)}, alpha=2.0)
    u = lx.random_layers(unet, lx.ATTENTION, rank=8, seed=3)
    t = lx.random_layers(te, ("q_proj", "v_proj", "fc1"), rank=8, seed=4)
    some = next(m for m in u if m.endswith("attn2.to_k"))
    meta = {"unet": lx.peft_config(u, 8, 4.0, {some: 16.0}),
            "text_encoder": lx.peft_config(t, 8, 2.0)}
    peft_meta = lx.write_peft(d / "peft_meta.safetensors", u, {"text_encoder": t}, meta)
    u2 = lx.random_layers(unet, ("to_k", "to_v", "proj_out"), rank=2, seed=5, scale=0.5)
    t2 = lx.random_layers(te, ("k_proj", "out_proj", "fc2"), rank=2, seed=6, scale=0.5)
    peft_plain = lx.write_peft(d / "peft_plain.safetensors", u2, {"text_encoder": t2},
                               text_model_prefix=True)
    return {"kohya": kohya, "peft_meta": peft_meta, "peft_plain": peft_plain}


def with_loras(nodes: dict, loras: list[tuple[Path, float, float]]) -> dict:
    """Load LoRA nodes ("lora", "lora2", ...) chained between "ckpt" and the nodes that take
    its model or clip."""
    prev = "ckpt"
    for i, (path, sm, sc) in enumerate(loras):
        nid = "lora" if i == 0 else f"lora{i + 1}"
        nodes[nid] = {"type": "loaders.lora", "model": link(prev, "model"),
                      "clip": link(prev, "clip"), "path": str(path), "strength_model": sm,
                      "strength_clip": sc}
        prev = nid
    for nid, node in nodes.items():
        if nid.startswith("lora"):
            continue
        for k, v in list(node.items()):
            if isinstance(v, dict) and v.get("node") == "ckpt" and v["output"] in ("model",
                                                                                   "clip"):
                node[k] = link(prev, v["output"])
    return nodes


def reference(folder: Path, loras: list[tuple[Path, float, float]], fuse: bool,
              sdxl: bool = False, negative: str = ""):
    """diffusers' image with the LoRAs: adapters at their scales, or fused into the weights."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    cls = StableDiffusionXLPipeline if sdxl else StableDiffusionPipeline
    pipe = use_scheduler(cls.from_pretrained(folder), SCHEDULER)
    names = []
    for i, (path, _, _) in enumerate(loras):
        pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=f"l{i}")
        names.append(f"l{i}")
    texts = ["text_encoder", "text_encoder_2"] if sdxl else ["text_encoder"]
    present = pipe.get_list_adapters()
    weights = [{c: (sm if c == "unet" else sc) for c in ["unet", *texts]
                if name in present.get(c, [])} for name, (_, sm, sc) in zip(names, loras)]
    if fuse and len(loras) == 1:  # the usual call: the scale given to fuse_lora
        pipe.fuse_lora(components=["unet"], lora_scale=loras[0][1])
        pipe.fuse_lora(components=texts, lora_scale=loras[0][2])
    else:  # several: their adapter scales, then (fuse) merged at those scales
        pipe.set_adapters(names, adapter_weights=weights)
        if fuse:
            pipe.fuse_lora(components=["unet", *texts], lora_scale=1.0)
    images = pipe(PROMPT, negative_prompt=negative, num_inference_steps=3, guidance_scale=7.0,
                  height=64, width=64, generator=generator(), output_type="np").images
    return as_image(images)


def loom_image(sess, tmp_path: Path, folder: Path, loras, family: str = "sd1",
               negative: str = "") -> torch.Tensor:
    nodes = with_loras(txt2img_nodes(folder, SCHEDULER, family=family, negative=negative),
                       loras)
    return run_loom(sess, tmp_path, nodes)


def check_both(sess, tmp_path, folder, loras, record: str, sdxl: bool = False,
               negative: str = "") -> torch.Tensor:
    family = "sdxl" if sdxl else "sd1"
    loom = loom_image(sess, tmp_path, folder, loras, family, negative)
    unfused = reference(folder, loras, fuse=False, sdxl=sdxl, negative=negative)
    assert_close(loom, unfused, f"{record}, diffusers adapters (unfused)")
    fused = reference(folder, loras, fuse=True, sdxl=sdxl, negative=negative)
    assert_close(loom, fused, f"{record}, diffusers fuse_lora")
    base = loom_image(sess, tmp_path / "base", folder, [], family, negative)
    assert (loom - base).abs().max() > 1e-2  # the LoRA changed the picture
    return loom


# ---- the proof: equal to diffusers ---------------------------------------------------------


def test_sd_kohya_locon(peft, sess, sd, files, tmp_path):
    check_both(sess, tmp_path, sd[0], [(files["kohya"], 0.8, 0.6)],
               "sd kohya LoRA + LoCon (model 0.8, clip 0.6)")


def test_sd_diffusers_format_with_metadata(peft, sess, sd, files, tmp_path):
    check_both(sess, tmp_path, sd[0], [(files["peft_meta"], 1.0, 1.3)],
               "sd diffusers/PEFT LoRA, alpha from lora_adapter_metadata (+ alpha_pattern)")


def test_sd_diffusers_format_plain_text_model_prefix(peft, sess, sd, files, tmp_path):
    check_both(sess, tmp_path, sd[0], [(files["peft_plain"], 0.7, 1.0)],
               "sd PEFT LoRA without metadata (alpha = rank), text_model. names")


def test_sd_chain_of_three(peft, sess, sd, files, tmp_path):
    loras = [(files["kohya"], 0.8, 0.6), (files["peft_meta"], -0.5, 1.0),
             (files["peft_plain"], 1.2, 0.4)]
    check_both(sess, tmp_path, sd[0], loras, "sd chain kohya + PEFT + PEFT", negative="dark")


def test_sdxl_kohya_original_block_names_and_peft(peft, sess, sdxl, tmp_path):
    folder, unet, te1, te2 = sdxl
    k = lx.write_kohya(tmp_path / "xl_kohya.safetensors",
                       lx.random_layers(unet, lx.ATTENTION + ("proj_in",), seed=7),
                       {"lora_te1": lx.random_layers(te1, lx.TE_ALL, seed=8),
                        "lora_te2": lx.random_layers(te2, lx.TE_ALL, seed=9)},
                       alpha=2.0, sgm_layers_per_block=unet.config.layers_per_block)
    p = lx.write_peft(tmp_path / "xl_peft.safetensors",
                      lx.random_layers(unet, ("to_q", "to_v", "ff.net.2"), seed=10),
                      {"text_encoder_2": lx.random_layers(te2, ("q_proj", "fc2"), seed=11)})
    check_both(sess, tmp_path / "k", folder, [(k, 0.9, 0.7)], "sdxl kohya (sgm names, te1+te2)",
               sdxl=True)
    check_both(sess, tmp_path / "kp", folder, [(k, 0.9, 0.7), (p, 0.5, 1.5)],
               "sdxl kohya + PEFT (text_encoder_2 only)", sdxl=True)


# ---- the library: formats, scales, merging -------------------------------------------------


def test_formats_parse_to_the_same_layers(sd, files, tmp_path):
    from nodes.lib.lora import read_lora

    _, unet, te = sd
    u = lx.random_layers(unet, ("to_q", "conv1"), seed=12)
    t = lx.random_layers(te, ("q_proj", "fc1"), seed=13)
    kohya = read_lora(lx.write_kohya(tmp_path / "a.safetensors", u, {"lora_te": t}, alpha=None))
    peft = read_lora(lx.write_peft(tmp_path / "b.safetensors", u, {"text_encoder": t}))
    assert (kohya.format, peft.format) == ("kohya", "diffusers")
    for comp in ("unet", "text_encoder"):
        a, b = kohya.layers[comp], peft.layers[comp]
        strip = {m.removeprefix("text_model."): v for m, v in a.items()}
        assert set(strip) == {m.removeprefix("text_model.") for m in b}
        for m, layer in b.items():
            other = strip[m.removeprefix("text_model.")]
            assert torch.equal(layer.down, other.down) and torch.equal(layer.up, other.up)
            assert layer.scale == other.scale == 1.0  # no alpha: alpha = rank


def test_alpha_scales(sd, tmp_path):
    from nodes.lib.lora import read_lora

    _, unet, _ = sd
    u = lx.random_layers(unet, ("to_q", "to_k"), rank=4, seed=14)
    q = next(m for m in u if m.endswith("to_q"))
    k = read_lora(lx.write_kohya(tmp_path / "k.safetensors", u, {}, alpha={q: 1.0}))
    assert {m: layer.scale for m, layer in k.layers["unet"].items()} == {
        m: (0.25 if m == q else 1.0) for m in u}
    meta = {"unet": {**lx.peft_config(u, 4, 8.0, {q: 2.0}), "use_rslora": True}}
    p = read_lora(lx.write_peft(tmp_path / "p.safetensors", u, {}, meta))
    assert {m: layer.scale for m, layer in p.layers["unet"].items()} == {
        m: (2.0 / 2 if m == q else 8.0 / 2) for m in u}  # rsLoRA: alpha / sqrt(rank)


def test_patched_copy_merges_and_shares_the_rest(sd):
    from nodes.lib.lora import LoraLayer, patched_copy

    _, unet, _ = sd
    base = copy.deepcopy(unet)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    name = next(n for n, m in base.named_modules() if n.endswith("attn1.to_q"))
    w = base.get_submodule(name).weight
    g = torch.Generator().manual_seed(0)
    layer = LoraLayer(torch.randn(4, w.shape[1], generator=g), torch.randn(w.shape[0], 4,
                                                                           generator=g), 2.0)
    patched = patched_copy(base, [({name: layer}, 0.7), ({name: layer}, 0.3)])
    expected = w + 1.0 * 0.5 * (layer.up @ layer.down)
    got = patched.get_submodule(name).weight
    assert torch.allclose(got, expected, atol=1e-6) and not torch.equal(got, w)
    for (k, v), (k2, v2) in zip(base.state_dict().items(), patched.state_dict().items()):
        assert k == k2
        assert torch.equal(before[k], v)  # the base is untouched
        if k != f"{name}.weight":
            assert v.data_ptr() == v2.data_ptr()  # shared, not copied


# ---- no drift, the cache, the model manager -------------------------------------------------


def lora_graph(folder: Path, path: Path, sm: float = 1.0, sc: float = 1.0) -> dict:
    return with_loras(txt2img_nodes(folder, SCHEDULER, negative="dark"), [(path, sm, sc)])


def test_strength_zero_is_the_base_after_many_changes(sess, sd, files, tmp_path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = sd[0]
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", lora_graph(folder,
                                                                         files["kohya"])))
    for i, (sm, sc) in enumerate([(1.0, 1.0), (0.3, -1.0), (-2.0, 0.5), (0.7, 0.0),
                                  (1.0, 2.0), (0.0, 0.0)]):
        graph.set_value("lora", "strength_model", sm)
        graph.set_value("lora", "strength_clip", sc)
        result = sess.run(graph, output_dir=tmp_path / f"out{i}", device="cpu")
        assert result.ok, result.errors
    ckpt_model, ckpt_clip = result.output("ckpt", "model"), result.output("ckpt", "clip")
    assert result.output("lora", "model") is ckpt_model  # strength 0: the very same model
    assert result.output("lora", "clip") is ckpt_clip
    fresh_unet = UNet2DConditionModel.from_pretrained(folder / "unet")
    fresh_te = CLIPTextModel.from_pretrained(folder / "text_encoder")
    for got, fresh in ((ckpt_model.unet, fresh_unet), (ckpt_clip.text_encoders[0], fresh_te)):
        a, b = got.state_dict(), fresh.state_dict()
        assert [k for k in a if not torch.equal(a[k], b[k])] == []  # bit for bit
    base_image = run_loom(sess, tmp_path / "nolora", txt2img_nodes(folder, SCHEDULER,
                                                                   negative="dark"))
    assert torch.equal(result.output("decode", "image"), base_image)  # removal = strength 0


def test_a_strength_reruns_only_what_it_feeds(sess, sd, files, tmp_path):
    from nodes.lib.model_manager import manager

    # strengths no other test uses: the session's cache is shared by the module's tests
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", lora_graph(sd[0], files["kohya"],
                                                                         0.45, 0.35)))
    first = sess.run(graph, output_dir=tmp_path / "o", device="cpu")
    assert first.ok and "lora" in first.ran
    models = manager()

    def rerun(**values):
        for k, v in values.items():
            graph.set_value("lora", k, v)
        loads = models.loads
        r = sess.run(graph, output_dir=tmp_path / "o", device="cpu")
        assert r.ok, r.errors
        return set(r.ran), models.loads - loads

    assert rerun() == (set(), 0)
    # model strength: the UNet side only; the patched text encoder comes from the manager
    assert rerun(strength_model=0.15) == (
        {"lora", "noise", "sched", "unet", "cfg", "sampler", "decode", "save"}, 1)
    # text encoder strength: the prompts, not the UNet Step; the patched UNet is reused
    assert rerun(strength_clip=0.25) == (
        {"lora", "pos", "neg", "cfg", "sampler", "decode", "save"}, 1)
    # back to a strength seen before: every model from the manager, only the loop runs again
    assert rerun(strength_model=0.45, strength_clip=0.35) == (set(), 0)


def test_evicted_patched_model_is_rebuilt_the_same(sess, sd, files, tmp_path):
    from nodes.lib.lora import PatchedHandle
    from nodes.lib.model_manager import manager

    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", lora_graph(sd[0],
                                                                         files["peft_meta"])))
    result = sess.run(graph, output_dir=tmp_path / "o", device="cpu")
    assert result.ok, result.errors
    model = result.output("lora", "model")
    assert isinstance(model.unet_ref, PatchedHandle)
    key = model.unet_ref.key
    assert key in manager().keys()
    nbytes = manager()._entries[key].nbytes
    assert nbytes >= sum(p.numel() * 4 for p in model.unet.parameters())  # counted in full
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    assert manager().release(key) and key not in manager().keys()
    after = model.unet.state_dict()  # borrowed again: rebuilt from the base and the file
    assert key in manager().keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---- files that cannot apply ---------------------------------------------------------------


def run_errors(sess, tmp_path: Path, nodes: dict) -> dict:
    tmp_path.mkdir(parents=True, exist_ok=True)
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", nodes))
    result = sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    assert not result.ok
    return {k: e.message for k, e in result.errors.items()}


def test_loha_is_refused_by_name(sess, sd, tmp_path):
    loha = lx.write_loha(tmp_path / "h.safetensors")
    errors = run_errors(sess, tmp_path, lora_graph(sd[0], loha))
    assert "LoHa" in errors["lora"]


def test_a_file_that_matches_nothing_says_so(sess, sd, tmp_path):
    from safetensors.torch import save_file

    d = torch.randn(4, 16)
    sd_other = {f"lora_unet_down_blocks_7_attentions_0_proj_in.{k}": v
                for k, v in (("lora_down.weight", d), ("lora_up.weight", d.T.contiguous()))}
    save_file(sd_other, str(tmp_path / "other.safetensors"))
    errors = run_errors(sess, tmp_path, lora_graph(sd[0], tmp_path / "other.safetensors"))
    assert "matched 0 of 1" in errors["lora"] and "another model family" in errors["lora"]
    save_file({"model.diffusion_model.input_blocks.0.0.weight": d},
              str(tmp_path / "ckpt.safetensors"))
    errors = run_errors(sess, tmp_path / "c", lora_graph(sd[0], tmp_path / "ckpt.safetensors"))
    assert "not a LoRA file" in errors["lora"]


def test_a_lora_for_another_family_is_an_error(sess, sd, sdxl, tmp_path):
    _, unet_xl, _, _ = sdxl
    path = lx.write_kohya(tmp_path / "xl.safetensors",
                          lx.random_layers(unet_xl, ("attn2.to_k",), seed=15), {})
    errors = run_errors(sess, tmp_path, lora_graph(sd[0], path))
    assert "does not fit" in errors["lora"] and "another model family" in errors["lora"]


def test_preflight_names_a_missing_file(sess, sd, tmp_path):
    from engine.errors import ValidationError

    nodes = lora_graph(sd[0], tmp_path / "missing.safetensors")
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", nodes))
    with pytest.raises(ValidationError) as info:
        sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    assert any(p.node_id == "lora" and p.input == "path" for p in info.value.problems)


# ---- the example workflow ------------------------------------------------------------------


def test_example_workflow_contract_and_run(sess, sd, files, tmp_path):
    """resources/workflows/examples/sd15_lora.json keeps the names scripts use (the SD txt2img
    example's node ids, a Load LoRA node `lora` with path / strength_model / strength_clip
    between `checkpoint` and the rest) and runs once its paths point at models."""
    import json

    path = fx.ROOT / "resources" / "workflows" / "examples" / "sd15_lora.json"
    n = json.loads(path.read_text())["nodes"]
    txt2img = json.loads((path.parent / "sd15_txt2img.json").read_text())["nodes"]
    assert set(txt2img) | {"lora"} == set(n)
    lora = n["lora"]
    assert lora["type"] == "loaders.lora"
    assert {"path", "strength_model", "strength_clip"} <= set(lora["inputs"])
    assert lora["inputs"]["model"] == {"node": "checkpoint", "output": "model"}
    assert lora["inputs"]["clip"] == {"node": "checkpoint", "output": "clip"}
    for nid, node in n.items():  # nothing else takes the checkpoint's model or text encoders
        if nid != "lora":
            assert all(not (isinstance(v, dict) and v["node"] == "checkpoint"
                            and v["output"] in ("model", "clip"))
                       for v in node["inputs"].values()), nid
    graph = sess.load(path)
    for target, value in (("checkpoint.path", str(sd[0])), ("lora.path", str(files["kohya"])),
                          ("noise.width", 64), ("noise.height", 64), ("scheduler.steps", 2)):
        sess.set(graph, target, value)
    result = sess.run(graph, output_dir=tmp_path, device="cpu")
    assert result.ok, {k: e.message for k, e in result.errors.items()}
    assert len(result.files) == 1 and Path(result.files[0]).is_file()
    assert result.ui["lora"]["lora_layers"]["unet"] > 0
