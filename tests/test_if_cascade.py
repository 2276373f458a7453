"""GLIDE-style pixel cascade: DeepFloyd IF stage I -> stage II (and IF inpainting) as Loom
node graphs give the same pixels as diffusers' IFPipeline -> IFSuperResolutionPipeline and
IFInpaintingPipeline (tiny random-weight models from configs, CPU fp32, within 1e-4)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests import sampling_fixtures as fx  # noqa: E402

one_torch_thread = fx.one_torch_thread  # fixtures shared with the other equality tests
sess = fx.sess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "resources" / "workflows" / "examples" / "if_cascade.json"
INPAINT_EXAMPLE = ROOT / "resources" / "workflows" / "examples" / "if_inpaint.json"
PROMPT = "A red circle on a blue background"
WORDS = "a red circle on blue background cat dog big small photo of the".split()
LOW, HIGH = 16, 32  # stage I and stage II sizes of the tiny models


# ---- tiny IF components (configs in code, no hub) ----------------------------------------------


def t5_tokenizer():
    """A tiny T5 (Unigram) tokenizer built in code; saved, it is a tokenizer.json."""
    from transformers import T5Tokenizer

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [("▁" + w, -1.0 - 0.1 * i) for i, w in enumerate(WORDS)]
    return T5Tokenizer(vocab=vocab, extra_ids=0)


def t5_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=32, d_kv=8, d_ff=37,
                                   num_layers=2, num_heads=4,
                                   relative_attention_num_buckets=8)).eval()


def if_unet(in_channels: int, sample_size: int, super_resolution: bool = False,
            channels: tuple[int, int] = (16, 32)):
    """IF's UNet layout in miniature (simple cross-attention blocks, text addition embedding,
    scale-shift resnets; stage II: noise level as timestep-embedded class labels)."""
    from diffusers import UNet2DConditionModel

    extra = dict(class_embed_type="timestep", mid_block_scale_factor=1.414,
                 time_embedding_act_fn="gelu", time_embedding_dim=32) if super_resolution else {}
    torch.manual_seed(1 if super_resolution else 0)
    return UNet2DConditionModel(
        sample_size=sample_size, layers_per_block=1, block_out_channels=list(channels),
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"],
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        up_block_types=["SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
        in_channels=in_channels, out_channels=6, cross_attention_dim=32, encoder_hid_dim=32,
        attention_head_dim=8, addition_embed_type="text", addition_embed_type_num_heads=2,
        cross_attention_norm="group_norm", resnet_time_scale_shift="scale_shift", act_fn="gelu",
        norm_num_groups=8, **extra).eval()


def if_scheduler(sample_max_value: float):
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                         beta_start=0.0001, beta_end=0.02, thresholding=True,
                         dynamic_thresholding_ratio=0.95, sample_max_value=sample_max_value,
                         prediction_type="epsilon", variance_type="learned_range")


def build_stage1(folder: Path, channels: tuple[int, int] = (16, 32)) -> Path:
    """`channels`: the UNet's block widths (benchmarks/bench_cascades.py builds wider ones)."""
    from diffusers import IFPipeline

    tok = t5_tokenizer()
    pipe = IFPipeline(tokenizer=tok, text_encoder=t5_encoder(len(tok)),
                      unet=if_unet(3, LOW, channels=channels), scheduler=if_scheduler(1.5),
                      safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_stage2(folder: Path, channels: tuple[int, int] = (16, 32)) -> Path:
    """`channels`: the UNet's block widths (benchmarks/bench_cascades.py builds wider ones)."""
    from diffusers import DDPMScheduler, IFSuperResolutionPipeline

    tok = t5_tokenizer()
    noising = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                            beta_start=0.0001, beta_end=0.02)
    pipe = IFSuperResolutionPipeline(
        tokenizer=tok, text_encoder=t5_encoder(len(tok)), unet=if_unet(6, HIGH, True, channels),
        scheduler=if_scheduler(1.0), image_noising_scheduler=noising, safety_checker=None,
        feature_extractor=None, watermarker=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def stage1(tmp_path_factory) -> Path:
    return build_stage1(tmp_path_factory.mktemp("if_stage1"))


@pytest.fixture(scope="module")
def stage2(tmp_path_factory) -> Path:
    return build_stage2(tmp_path_factory.mktemp("if_stage2"))


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_example(sess, path: Path, out: Path, values: dict) -> object:
    graph = sess.load(path)
    for target, value in values.items():
        sess.set(graph, target, value)
    result = sess.run(graph, output_dir=out, device="cpu")
    assert result.ok, {k: (e.message, e.traceback) for k, e in result.errors.items()}
    return result


def cascade_values(stage1: Path, stage2: Path, seed1: int = 3, seed2: int = 5,
                   scale: float = 7.0) -> dict:
    return {"stage1_loader.path": str(stage1), "stage2_loader.path": str(stage2),
            "prompt.text": PROMPT, "noise.seed": seed1, "noise.width": LOW,
            "noise.height": LOW, "scheduler.steps": 4, "cfg.scale": scale,
            "sr.seed": seed2, "sr.width": HIGH, "sr.height": HIGH, "sr.noise_level": 250,
            "scheduler2.steps": 3, "cfg2.scale": 4.0}


def diffusers_cascade(stage1: Path, stage2: Path, seed1: int = 3, seed2: int = 5,
                      scale: float = 7.0):
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    p1 = _quiet(IFPipeline.from_pretrained(stage1))
    low = p1(PROMPT, num_inference_steps=4, guidance_scale=scale, height=LOW, width=LOW,
             generator=torch.Generator("cpu").manual_seed(seed1), output_type="pt",
             clean_caption=False).images
    p2 = _quiet(IFSuperResolutionPipeline.from_pretrained(stage2))
    high = p2(PROMPT, image=low, num_inference_steps=3, guidance_scale=4.0, noise_level=250,
              height=HIGH, width=HIGH, generator=torch.Generator("cpu").manual_seed(seed2),
              output_type="pt", clean_caption=False).images
    return low, high


# ---- the cascade equals diffusers -------------------------------------------------------------


def test_if_cascade_example_equals_diffusers(sess, stage1, stage2, tmp_path):
    result = run_example(sess, EXAMPLE, tmp_path / "out", cascade_values(stage1, stage2))
    ref_low, ref_high = diffusers_cascade(stage1, stage2)
    low = result.output("sampler", "latent")
    high = result.output("sampler2", "latent")
    # stage I's floats (not 8-bit pixels) feed stage II, as in the diffusers cascade
    fx.assert_close(low, ref_low, "IF stage I (pixels in -1..1)")
    fx.assert_close(high, ref_high, "IF stage II (pixels in -1..1)")
    assert high.shape == (1, 3, HIGH, HIGH)
    image = result.output("decode", "image")
    fx.assert_close(image, (ref_high / 2 + 0.5).clamp(0, 1), "IF stage II image")
    assert len(result.files) == 1 and result.files[0].endswith(".png")


def test_if_without_guidance_equals_diffusers(sess, stage1, stage2, tmp_path):
    """Scale 1: one UNet row, the 6-channel prediction goes to the scheduler whole."""
    result = run_example(sess, EXAMPLE, tmp_path / "out",
                         cascade_values(stage1, stage2, seed1=11, scale=1.0))
    ref_low, _ = diffusers_cascade(stage1, stage2, seed1=11, scale=1.0)
    fx.assert_close(result.output("sampler", "latent"), ref_low, "IF stage I at scale 1")


def test_changing_only_the_stage2_seed_does_not_rerun_stage1(sess, stage1, stage2, tmp_path):
    values = cascade_values(stage1, stage2, seed1=21, seed2=1)
    first = run_example(sess, EXAMPLE, tmp_path / "a", values)
    assert "sampler" in first.ran and "sampler2" in first.ran
    again = run_example(sess, EXAMPLE, tmp_path / "b", {**values, "sr.seed": 2})
    assert "sampler" in again.cached and "sampler" not in again.ran
    assert {"sr", "sampler2", "decode", "save"} <= set(again.ran)
    diff = (again.output("sampler2", "latent") - first.output("sampler2", "latent")).abs().max()
    assert diff > 1e-3  # stage II's seed matters


def test_other_schedulers_drop_the_learned_variance(sess, stage1, stage2, tmp_path):
    """A scheduler without a learned variance gets the noise half only (IFPipeline's split),
    so stage I samples with DDIM too, and equals IFPipeline with that scheduler. (IFPipeline
    decides by the config's variance_type, which a DDIM made from IF's config carries along
    unused, so the reference's DDIM says "fixed_small"; Loom decides by the class.)"""
    from diffusers import DDIMScheduler, IFPipeline

    values = {**cascade_values(stage1, stage2, seed1=4), "scheduler.name": "ddim"}
    graph = sess.load(EXAMPLE)
    for target, value in values.items():
        sess.set(graph, target, value)
    result = sess.run(graph, outputs=["sampler"], output_dir=tmp_path, device="cpu")
    assert result.ok, {k: (e.message, e.traceback) for k, e in result.errors.items()}
    pipe = _quiet(IFPipeline.from_pretrained(stage1))
    pipe.scheduler = DDIMScheduler.from_config(
        {**pipe.scheduler.config, "variance_type": "fixed_small"})
    ref = pipe(PROMPT, num_inference_steps=4, guidance_scale=7.0, height=LOW, width=LOW,
               generator=torch.Generator("cpu").manual_seed(4), output_type="pt",
               clean_caption=False).images
    fx.assert_close(result.output("sampler", "latent"), ref, "IF stage I with DDIM")


# ---- inpainting --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def inpaint_files(tmp_path_factory):
    """A 16x16 picture and a mask (white = repaint) as PNG files."""
    from PIL import Image

    d = tmp_path_factory.mktemp("if_inpaint_img")
    rs = np.random.RandomState(0)
    arr = (rs.rand(LOW, LOW, 3) * 255).astype(np.uint8)
    Image.fromarray(arr).save(d / "image.png")
    mask = np.zeros((LOW, LOW), np.uint8)
    mask[4:12, 6:14] = 255
    Image.fromarray(mask, "L").save(d / "mask.png")
    return d / "image.png", d / "mask.png"


@pytest.mark.parametrize("strength", [1.0, 0.6])
def test_if_inpainting_example_equals_diffusers(sess, stage1, inpaint_files, tmp_path,
                                                strength):
    from diffusers import IFInpaintingPipeline
    from PIL import Image

    image_png, mask_png = inpaint_files
    values = {"stage1_loader.path": str(stage1), "prompt.text": PROMPT, "noise.seed": 7,
              "noise.width": LOW, "noise.height": LOW, "scheduler.steps": 5,
              "scheduler.strength": strength, "image.image": str(image_png),
              "mask.image": str(mask_png)}
    result = run_example(sess, INPAINT_EXAMPLE, tmp_path / "out", values)
    image = torch.from_numpy(np.asarray(Image.open(image_png), np.float32) / 255.0)
    image = image.permute(2, 0, 1)[None]
    mask = torch.from_numpy(np.asarray(Image.open(mask_png), np.float32) / 255.0)[None, None]
    pipe = _quiet(IFInpaintingPipeline.from_pretrained(stage1))
    ref = pipe(PROMPT, image=image * 2 - 1, mask_image=mask, strength=strength,
               num_inference_steps=5, guidance_scale=7.0,
               generator=torch.Generator("cpu").manual_seed(7), output_type="pt",
               clean_caption=False).images
    loom = result.output("sampler", "latent")
    fx.assert_close(loom, ref, f"IF inpainting strength {strength}")
    keep = mask[0, 0] < 0.5  # the known region stays the original picture exactly
    assert (loom[0][:, keep] - (image * 2 - 1)[0][:, keep]).abs().max() < 1e-6


# ---- the CLI contract ---------------------------------------------------------------------------


def test_cli_runs_the_cascade_example_and_writes_one_png(stage1, stage2, tmp_path):
    out = tmp_path / "out"
    sets = {"stage1_loader.path": stage1, "stage2_loader.path": stage2,
            "prompt.text": "a big red cat", "noise.width": LOW, "noise.height": LOW,
            "scheduler.steps": 2, "sr.width": HIGH, "sr.height": HIGH, "scheduler2.steps": 2}
    cmd = [sys.executable, "main.py", "run", str(EXAMPLE), "--out", str(out)]
    for target, value in sets.items():
        cmd += ["--set", f"{target}={value}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "HF_HUB_OFFLINE": "1", "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = list(out.rglob("*.png"))
    assert len(pngs) == 1
    from PIL import Image

    assert Image.open(pngs[0]).size == (HIGH, HIGH)


# ---- loaders: folders, tokenizers, errors ------------------------------------------------------


def test_loader_outputs_and_stage_detection(stage1, stage2):
    from nodes.lib.deepfloyd import STAGE_I, STAGE_II, load_if
    from nodes.lib.model_manager import ModelManager

    models = ModelManager(budget_bytes=2**30)
    one = load_if(stage1, dtype="fp32", device="cpu", models=models)
    two = load_if(stage2, dtype="fp32", device="cpu", models=models)
    assert (one.stage, two.stage) == (STAGE_I, STAGE_II)
    assert one.model.extra["sample_channels"] == 3 and two.model.extra["sample_channels"] == 3
    assert two.model.extra["image_noising_scheduler"]["_class_name"] == "DDPMScheduler"
    assert one.model.scheduler_config["variance_type"] == "learned_range"
    assert type(one.t5.tokenizer).__name__ == "T5Tokenizer"
    assert models.loads == 4  # UNet + T5 per stage
    load_if(stage1, dtype="fp32", device="cpu", models=models)
    assert models.loads == 4  # shared, not loaded twice


def test_t5_encoding_equals_if_encode_prompt(stage1):
    from diffusers import IFPipeline

    from nodes.lib.deepfloyd import encode_t5, load_if
    from nodes.lib.model_manager import ModelManager

    t5 = load_if(stage1, dtype="fp32", device="cpu",
                 models=ModelManager(budget_bytes=2**30)).t5
    pipe = IFPipeline.from_pretrained(stage1)
    ref, neg = pipe.encode_prompt(PROMPT, True, device="cpu", clean_caption=False)
    assert torch.equal(encode_t5(t5, PROMPT).embeds, ref)
    assert torch.equal(encode_t5(t5, "").embeds, neg)
    assert ref.shape[1] == 77


def test_spiece_tokenizer_without_sentencepiece_names_the_package(tmp_path, monkeypatch):
    import importlib.util

    from nodes.lib import deepfloyd
    from nodes.lib.deepfloyd import MissingPackageError, load_t5_tokenizer

    (tmp_path / "spiece.model").write_bytes(b"\x00not a real model")
    real = importlib.util.find_spec
    monkeypatch.setattr(deepfloyd.importlib.util, "find_spec",
                        lambda name, *a: None if name == "sentencepiece" else real(name, *a))
    with pytest.raises(MissingPackageError, match="'sentencepiece'"):
        load_t5_tokenizer(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(deepfloyd.CheckpointError, match="neither tokenizer.json nor spiece"):
        load_t5_tokenizer(empty)


def _run_loader(sess, path: str, tmp_path: Path):
    doc = {"schema_version": 1, "nodes": {
        "stage1_loader": {"type": "loaders.deepfloyd_if", "inputs": {"path": path}},
        "prompt": {"type": "conditioning.t5_encode", "inputs": {
            "t5": {"node": "stage1_loader", "output": "t5"}, "text": "a cat"}}}}
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps(doc))
    graph = sess.load(wf, check=False)
    return graph


def test_bad_folders_are_errors_of_the_path_input(sess, stage1, tmp_path):
    from engine.errors import ValidationError

    not_if = tmp_path / "not_if"
    not_if.mkdir()
    (not_if / "model_index.json").write_text("{}")
    pickled = tmp_path / "pickled"
    import shutil

    shutil.copytree(stage1, pickled)
    for f in (pickled / "unet").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    for path, words in ((not_if, "unet/config.json"), (tmp_path / "missing", "missing"),
                        (pickled, "pickled weights")):
        graph = _run_loader(sess, str(path), tmp_path)
        try:
            result = sess.run(graph, outputs=["prompt"], output_dir=tmp_path / "o",
                              device="cpu")
        except ValidationError as exc:  # caught before the run (preflight)
            problems = [p for p in exc.problems if p.node_id == "stage1_loader"]
            assert problems and problems[0].input == "path", exc
            assert words in problems[0].message
            continue
        assert not result.ok
        err = result.errors["stage1_loader"]
        assert err.input == "path" and words in err.message, err.message


def test_stage2_conditioning_refuses_a_stage1_model(sess, stage1, stage2, tmp_path):
    values = {**cascade_values(stage1, stage2), "stage2_loader.path": str(stage1)}
    graph = sess.load(EXAMPLE)
    for target, value in values.items():
        sess.set(graph, target, value)
    result = sess.run(graph, output_dir=tmp_path, device="cpu")
    err = result.errors["sr"]
    assert err.input == "model" and "stage II" in err.message


def _png(path: Path, shape: tuple[int, ...], seed: int, box: tuple[slice, slice] | None = None
         ) -> Path:
    from PIL import Image

    rs = np.random.RandomState(seed)
    if box is None:
        Image.fromarray((rs.rand(*shape) * 255).astype(np.uint8)).save(path)
    else:
        arr = np.zeros(shape, np.uint8)
        arr[box] = 255
        Image.fromarray(arr, "L").save(path)
    return path


def _as_tensor(path: Path) -> torch.Tensor:
    from PIL import Image

    arr = np.asarray(Image.open(path), np.float32) / 255.0
    t = torch.from_numpy(arr)
    return t.permute(2, 0, 1)[None] if t.ndim == 3 else t[None, None]


def test_if_inpainting_super_resolution_equals_diffusers(sess, stage2, tmp_path):
    """IFInpaintingSuperResolutionPipeline: stage II's conditioning from the low-res image,
    the Sampler's init = the full-size original, blended with the mask (kept clean)."""
    from diffusers import IFInpaintingSuperResolutionPipeline

    L = fx.link
    tmp_path.mkdir(parents=True, exist_ok=True)
    low = _png(tmp_path / "low.png", (LOW, LOW, 3), 1)
    original = _png(tmp_path / "original.png", (HIGH, HIGH, 3), 2)
    mask = _png(tmp_path / "mask.png", (HIGH, HIGH), 0, (slice(8, 24), slice(4, 20)))
    nodes = {
        "stage2_loader": {"type": "loaders.deepfloyd_if", "path": str(stage2)},
        "prompt": {"type": "conditioning.t5_encode", "t5": L("stage2_loader", "t5"),
                   "text": PROMPT},
        "negative": {"type": "conditioning.t5_encode", "t5": L("stage2_loader", "t5"),
                     "text": ""},
        "low": {"type": "image.load", "image": str(low)},
        "original": {"type": "image.load", "image": str(original)},
        "mask": {"type": "image.load_mask", "image": str(mask)},
        "pixels": {"type": "cascade.image_to_pixels", "image": L("original", "image")},
        "sr": {"type": "cascade.if_super_resolution", "model": L("stage2_loader", "model"),
               "image": L("low", "image"), "width": HIGH, "height": HIGH, "noise_level": 100,
               "seed": 9},
        "unet": {"type": "sampling.unet_step", "model": L("stage2_loader", "model")},
        "cfg": {"type": "sampling.cfg_combine", "denoiser": L("unet", "denoiser"),
                "positive": L("prompt", "conditioning"),
                "negative": L("negative", "conditioning"), "scale": 4.0},
        "sched": {"type": "sampling.scheduler", "model": L("stage2_loader", "model"),
                  "name": "default", "steps": 5, "strength": 0.8},
        "sampler": {"type": "sampling.sampler", "denoiser": L("cfg", "denoiser"),
                    "scheduler": L("sched", "scheduler"), "noise": L("sr", "noise"),
                    "image_cond": L("sr", "image_cond"), "init": L("pixels", "pixels"),
                    "mask": L("mask", "mask")},
        "decode": {"type": "pixel.decode", "sample": L("sampler", "latent")},
        "save": {"type": "image.save", "images": L("decode", "image"), "prefix": "ifsr"},
    }
    wf = fx.write_workflow(tmp_path / "wf.json", nodes)
    result = sess.run(sess.load(wf), output_dir=tmp_path / "out", device="cpu")
    assert result.ok, {k: (e.message, e.traceback) for k, e in result.errors.items()}
    pipe = _quiet(IFInpaintingSuperResolutionPipeline.from_pretrained(stage2))
    ref = pipe(prompt=PROMPT, image=_as_tensor(low) * 2 - 1,
               original_image=_as_tensor(original) * 2 - 1,
               mask_image=_as_tensor(mask), strength=0.8, num_inference_steps=5,
               guidance_scale=4.0, noise_level=100,
               generator=torch.Generator("cpu").manual_seed(9), output_type="pt",
               clean_caption=False).images
    fx.assert_close(result.output("sampler", "latent"), ref, "IF inpainting super-resolution")


def test_if_stage1_then_sd_x4_upscaler_example(sess, stage1, tmp_path_factory, tmp_path):
    """The pixel stage I's image (Pixel Decode) upscaled by the SD x4 upscaler equals
    IFPipeline -> StableDiffusionUpscalePipeline given that image."""
    from diffusers import IFPipeline, StableDiffusionUpscalePipeline

    x4 = fx.build_x4(tmp_path_factory.mktemp("x4"))
    example = EXAMPLE.parent / "if_sd_x4_upscale.json"
    values = {"stage1_loader.path": str(stage1), "prompt.text": PROMPT, "noise.seed": 8,
              "noise.width": LOW, "noise.height": LOW, "scheduler.steps": 3,
              "x4_checkpoint.path": str(x4), "x4_prompt.text": PROMPT, "x4.seed": 6,
              "x4_scheduler.name": "ddim", "x4_scheduler.steps": 3}
    result = run_example(sess, example, tmp_path / "out", values)
    low = _quiet(IFPipeline.from_pretrained(stage1))(
        PROMPT, num_inference_steps=3, guidance_scale=7.0, height=LOW, width=LOW,
        generator=torch.Generator("cpu").manual_seed(8), output_type="pt",
        clean_caption=False).images
    pipe = fx.use_scheduler(StableDiffusionUpscalePipeline.from_pretrained(x4), "ddim")
    ref = pipe(PROMPT, negative_prompt="blurry, jpeg artefacts", image=(low / 2 + 0.5).clamp(0, 1),
               num_inference_steps=3, guidance_scale=9.0, noise_level=20,
               generator=torch.Generator("cpu").manual_seed(6), output_type="np").images
    image = result.output("decode", "image")
    assert image.shape[-1] == 4 * LOW
    fx.assert_close(image, fx.as_image(ref), "IF stage I -> SD x4 upscaler")


def test_main_nodes_lists_the_cascade_nodes():
    proc = subprocess.run([sys.executable, "main.py", "nodes"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120,
                          env={**os.environ, "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, proc.stderr
    for type_id, words in (("loaders.deepfloyd_if", "Load a DeepFloyd IF stage"),
                           ("conditioning.t5_encode", "T5 encoder"),
                           ("cascade.if_super_resolution", "Prepare DeepFloyd IF stage II"),
                           ("cascade.image_to_pixels", "pixel-space model")):
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith(type_id + " ")), "")
        assert words in line, (type_id, line)


def test_a_folder_without_text_encoder_loads_and_t5_encode_names_its_input(sess, stage2,
                                                                            tmp_path):
    """IF stage II is often used without its own T5 (the cascade encodes once, with stage I's):
    such a folder loads, and a T5 Text Encoder fed from it says what to connect instead."""
    import shutil

    folder = tmp_path / "no_t5"
    shutil.copytree(stage2, folder)
    shutil.rmtree(folder / "text_encoder")
    index = json.loads((folder / "model_index.json").read_text())
    index["text_encoder"] = [None, None]
    (folder / "model_index.json").write_text(json.dumps(index))
    graph = _run_loader(sess, str(folder), tmp_path)
    result = sess.run(graph, outputs=["prompt"], output_dir=tmp_path / "o", device="cpu")
    assert result.status["stage1_loader"] == "done"
    err = result.errors["prompt"]
    assert err.input == "t5" and "no text encoder" in err.message, err.message
