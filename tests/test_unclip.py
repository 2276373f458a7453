"""DALL·E 2 / unCLIP in Loom (Kandinsky 2.2, Stable unCLIP) equals diffusers' pipelines.

Tiny random-weight components are built from configs, saved as diffusers folders, loaded by
Loom's loaders and run as Loom workflows through the engine; the diffusers pipelines get the
same folders and seeds. Images agree within 1e-4 (CPU, fp32).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import as_image, assert_close, generator, link, run_loom  # noqa: E402

one_torch_thread = fx.one_torch_thread
sess = fx.sess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "resources" / "workflows" / "examples"
PROMPT = "a red circle on a blue background"
DIM = 32  # CLIP embedding size of the tiny models


# ---- tiny components --------------------------------------------------------------------------


def _image_encoder():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(1)
    enc = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=32, image_size=32, projection_dim=DIM, intermediate_size=37,
        num_attention_heads=4, num_channels=3, num_hidden_layers=2, patch_size=8))
    proc = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return enc, proc


def _prior():
    from diffusers import PriorTransformer

    torch.manual_seed(2)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=DIM,
                             num_layers=1)
    with torch.no_grad():  # a fresh prior's CLIP statistics are zero: make them count
        prior.clip_std.copy_(torch.rand(1, DIM) + 0.5)
        prior.clip_mean.copy_(torch.randn(1, DIM))
    return prior


def _kandinsky_unet(in_channels: int, channels: tuple[int, int] = (16, 32)):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(3)
    return UNet2DConditionModel(
        in_channels=in_channels, out_channels=8, addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=channels,
        layers_per_block=1, encoder_hid_dim=DIM, encoder_hid_dim_type="image_proj",
        cross_attention_dim=32, attention_head_dim=4, resnet_time_scale_shift="scale_shift",
        class_embed_type=None, norm_num_groups=8, sample_size=8)


def _movq():
    from diffusers import VQModel

    torch.manual_seed(4)
    return VQModel(
        block_out_channels=[32, 32, 32, 32],
        down_block_types=["DownEncoderBlock2D"] * 3 + ["AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D"] + ["UpDecoderBlock2D"] * 3, in_channels=3,
        latent_channels=4, layers_per_block=1, norm_num_groups=8, norm_type="spatial",
        num_vq_embeddings=12, out_channels=3, vq_embed_dim=4)


def _ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.00085,
                         beta_end=0.012, clip_sample=False, steps_offset=1,
                         prediction_type="epsilon", thresholding=False)


def build_kandinsky_prior(folder: Path) -> Path:
    from diffusers import KandinskyV22PriorPipeline, UnCLIPScheduler

    enc, proc = _image_encoder()
    sched = UnCLIPScheduler(variance_type="fixed_small_log", prediction_type="sample",
                            num_train_timesteps=1000, clip_sample=True, clip_sample_range=10.0)
    KandinskyV22PriorPipeline(
        prior=_prior(), image_encoder=enc, text_encoder=fx.tiny_text_encoder(projection=DIM),
        tokenizer=fx.tokenizer(), scheduler=sched, image_processor=proc).save_pretrained(folder)
    return folder


def build_kandinsky_decoder(folder: Path, inpaint: bool = False,
                            channels: tuple[int, int] = (16, 32)) -> Path:
    """`channels`: the UNet's block widths (benchmarks/bench_cascades.py builds wider ones)."""
    from diffusers import KandinskyV22InpaintPipeline, KandinskyV22Pipeline

    cls = KandinskyV22InpaintPipeline if inpaint else KandinskyV22Pipeline
    cls(unet=_kandinsky_unet(9 if inpaint else 4, channels), scheduler=_ddpm(),
        movq=_movq()).save_pretrained(folder)
    return folder


def _unclip_common():
    from diffusers import DDIMScheduler, DDPMScheduler
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )

    torch.manual_seed(5)
    norm = StableUnCLIPImageNormalizer(embedding_dim=DIM)
    with torch.no_grad():
        norm.mean.copy_(torch.randn(1, DIM) * 0.1)
        norm.std.copy_(torch.rand(1, DIM) + 0.5)
    unet = fx.tiny_unet(4, class_embed_type="projection",
                        projection_class_embeddings_input_dim=2 * DIM)
    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type="v_prediction", set_alpha_to_one=False,
                          steps_offset=1)
    return dict(image_normalizer=norm,
                image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
                tokenizer=fx.tokenizer(), text_encoder=fx.tiny_text_encoder(), unet=unet,
                scheduler=sched, vae=fx.tiny_vae())


def build_stable_unclip(folder: Path) -> Path:
    from diffusers import DDPMScheduler, StableUnCLIPPipeline

    prior_sched = DDPMScheduler(variance_type="fixed_small_log", prediction_type="sample",
                                num_train_timesteps=1000, clip_sample=True,
                                clip_sample_range=5.0, beta_schedule="squaredcos_cap_v2")
    StableUnCLIPPipeline(
        prior_tokenizer=fx.tokenizer(), prior_text_encoder=fx.tiny_text_encoder(
            projection=DIM, seed=7), prior=_prior(), prior_scheduler=prior_sched,
        **_unclip_common()).save_pretrained(folder)
    return folder


def build_stable_unclip_img2img(folder: Path) -> Path:
    from diffusers import StableUnCLIPImg2ImgPipeline

    enc, proc = _image_encoder()
    StableUnCLIPImg2ImgPipeline(feature_extractor=proc, image_encoder=enc,
                                **_unclip_common()).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def prior_dir(tmp_path_factory):
    return build_kandinsky_prior(tmp_path_factory.mktemp("k_prior"))


@pytest.fixture(scope="module")
def decoder_dir(tmp_path_factory):
    return build_kandinsky_decoder(tmp_path_factory.mktemp("k_decoder"))


@pytest.fixture(scope="module")
def inpaint_dir(tmp_path_factory):
    return build_kandinsky_decoder(tmp_path_factory.mktemp("k_inpaint"), inpaint=True)


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory):
    return build_stable_unclip(tmp_path_factory.mktemp("unclip"))


@pytest.fixture(scope="module")
def unclip_i2i_dir(tmp_path_factory):
    return build_stable_unclip_img2img(tmp_path_factory.mktemp("unclip_i2i"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two 64x64 test pictures and a mask (white = repaint)."""
    from PIL import Image

    d = tmp_path_factory.mktemp("img")
    rs = np.random.RandomState(0)
    for name, colour in (("a.png", (220, 40, 40)), ("b.png", (30, 200, 90))):
        arr = (rs.rand(64, 64, 3) * 255).astype(np.uint8)
        arr[16:48, 16:48] = colour
        Image.fromarray(arr).save(d / name)
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 24:56] = 255
    Image.fromarray(mask, "L").save(d / "mask.png")
    # 128 px (16x16 latents, which convolve on the same CPU path as diffusers: see
    # nodes.lib.cpu_conv.SMALL_LATENT_PIXELS) for the inpainting case, whose random 9-channel
    # UNet amplifies rounding differences the most
    arr = (rs.rand(128, 128, 3) * 255).astype(np.uint8)
    arr[32:96, 40:100] = (40, 40, 220)
    Image.fromarray(arr).save(d / "c128.png")
    mask = np.zeros((128, 128), np.uint8)
    mask[20:70, 50:120] = 255
    Image.fromarray(mask, "L").save(d / "mask128.png")
    return d


def _pipe(cls, folder: Path):
    pipe = cls.from_pretrained(str(folder), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _decoder_nodes(decoder: Path, seed: int, steps: int, scale: float, size: int = 64) -> dict:
    """A Kandinsky decoder run: positive/negative conditioning nodes "pos_cond"/"neg_cond"
    are the caller's."""
    return {
        "decoder_loader": {"type": "loaders.kandinsky_decoder", "path": str(decoder)},
        "unet": {"type": "sampling.unet_step", "model": link("decoder_loader", "model")},
        "cfg": {"type": "sampling.cfg_combine", "denoiser": link("unet", "denoiser"),
                "positive": link("pos_cond", "conditioning"),
                "negative": link("neg_cond", "conditioning"), "scale": scale},
        "scheduler": {"type": "sampling.scheduler", "model": link("decoder_loader", "model"),
                      "name": "default", "steps": steps},
        "noise": {"type": "latents.noise", "seed": seed, "width": size, "height": size,
                  "model": link("decoder_loader", "model")},
        "sampler": {"type": "sampling.sampler", "denoiser": link("cfg", "denoiser"),
                    "scheduler": link("scheduler", "scheduler"),
                    "noise": link("noise", "noise")},
        "decode": {"type": "unclip.movq_decode", "movq": link("decoder_loader", "movq"),
                   "latent": link("sampler", "latent")},
        "save": {"type": "image.save", "images": link("decode", "image"), "prefix": "k"},
    }


def _prior_nodes(prior: Path, prompt: str, seed: int, steps: int, guidance: float) -> dict:
    return {
        "prior_loader": {"type": "loaders.kandinsky_prior", "path": str(prior)},
        "prompt": {"type": "unclip.prior_prompt", "prior": link("prior_loader", "prior"),
                   "text": prompt},
        "prior": {"type": "unclip.prior", "prior": link("prior_loader", "prior"),
                  "prompt": link("prompt", "prompt"), "steps": steps, "guidance": guidance,
                  "seed": seed},
    }


# ---- Kandinsky 2.2 ----------------------------------------------------------------------------


@pytest.mark.parametrize("prior_guidance,scale", [(4.0, 4.0), (1.0, 1.0)])
def test_kandinsky_prior_then_decoder(sess, prior_dir, decoder_dir, tmp_path, prior_guidance,
                                      scale):
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    nodes = {**_prior_nodes(prior_dir, PROMPT, 7, 3, prior_guidance),
             "pos_cond": {"type": "unclip.conditioning", "embeds": link("prior", "embeds")},
             "neg_cond": {"type": "unclip.conditioning", "embeds": link("prior", "negative")},
             **_decoder_nodes(decoder_dir, 11, 3, scale)}
    loom = run_loom(sess, tmp_path, nodes)

    prior = _pipe(KandinskyV22PriorPipeline, prior_dir)
    emb, neg = prior(PROMPT, num_inference_steps=3, guidance_scale=prior_guidance,
                     generator=generator(7)).to_tuple()
    dec = _pipe(KandinskyV22Pipeline, decoder_dir)
    ref = dec(image_embeds=emb, negative_image_embeds=neg, height=64, width=64,
              num_inference_steps=3, guidance_scale=scale, generator=generator(11),
              output_type="np").images
    assert_close(loom, as_image(ref), f"kandinsky22 prior {prior_guidance} / cfg {scale}")


def test_kandinsky_prior_negative_prompt(sess, prior_dir, tmp_path):
    """A negative prompt runs through the prior in the same batch, as in diffusers."""
    from diffusers import KandinskyV22PriorPipeline

    nodes = _prior_nodes(prior_dir, PROMPT, 3, 4, 4.0)
    nodes["prompt"]["negative"] = "blurry"
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", nodes))
    result = sess.run(graph, output_dir=tmp_path / "out", device="cpu", outputs=["prior"])
    assert result.ok, result.errors
    prior = _pipe(KandinskyV22PriorPipeline, prior_dir)
    emb, neg = prior(PROMPT, negative_prompt="blurry", num_inference_steps=4,
                     generator=generator(3)).to_tuple()
    for name, ref in (("embeds", emb), ("negative", neg)):
        diff = (result.output("prior", name) - ref).abs().max().item()
        print(f"[equality] kandinsky prior negative prompt {name}: {diff:.3g}")
        assert diff <= 1e-5


def test_kandinsky_interpolate_two_images_and_a_prompt(sess, prior_dir, decoder_dir, images,
                                                       tmp_path):
    """KandinskyV22PriorPipeline.interpolate: images and a prompt, weighted, then decoded."""
    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline
    from PIL import Image

    nodes = {
        **_prior_nodes(prior_dir, "a green square", 5, 3, 4.0),
        "img_a": {"type": "image.load", "image": str(images / "a.png")},
        "img_b": {"type": "image.load", "image": str(images / "b.png")},
        "enc_a": {"type": "unclip.image_encode",
                  "image_encoder": link("prior_loader", "image_encoder"),
                  "image": link("img_a", "image")},
        "enc_b": {"type": "unclip.image_encode",
                  "image_encoder": link("prior_loader", "image_encoder"),
                  "image": link("img_b", "image")},
        "mix": {"type": "unclip.mix", "embeds_1": link("enc_a", "embeds"), "weight_1": 0.5,
                "embeds_2": link("prior", "embeds"), "weight_2": 0.2,
                "embeds_3": link("enc_b", "embeds"), "weight_3": 0.3},
        "pos_cond": {"type": "unclip.conditioning", "embeds": link("mix", "embeds")},
        "neg_cond": {"type": "unclip.conditioning", "embeds": link("enc_a", "negative")},
        **_decoder_nodes(decoder_dir, 9, 3, 4.0),
    }
    loom = run_loom(sess, tmp_path, nodes)

    prior = _pipe(KandinskyV22PriorPipeline, prior_dir)
    a = Image.open(images / "a.png")
    b = Image.open(images / "b.png")
    out = prior.interpolate([a, "a green square", b], [0.5, 0.2, 0.3], num_inference_steps=3,
                            generator=generator(5))
    dec = _pipe(KandinskyV22Pipeline, decoder_dir)
    ref = dec(image_embeds=out.image_embeds, negative_image_embeds=out.negative_image_embeds,
              height=64, width=64, num_inference_steps=3, guidance_scale=4.0,
              generator=generator(9), output_type="np").images
    assert_close(loom, as_image(ref), "kandinsky22 interpolate")


def test_kandinsky_inpaint(sess, prior_dir, inpaint_dir, images, tmp_path):
    from diffusers import KandinskyV22InpaintPipeline, KandinskyV22PriorPipeline
    from PIL import Image

    nodes = {
        **_prior_nodes(prior_dir, PROMPT, 2, 3, 4.0),
        "pos_cond": {"type": "unclip.conditioning", "embeds": link("prior", "embeds")},
        "neg_cond": {"type": "unclip.conditioning", "embeds": link("prior", "negative")},
        **_decoder_nodes(inpaint_dir, 4, 3, 4.0, size=128),
        "image": {"type": "image.load", "image": str(images / "c128.png")},
        "mask": {"type": "image.load_mask", "image": str(images / "mask128.png")},
        "encode": {"type": "unclip.movq_encode", "movq": link("decoder_loader", "movq"),
                   "image": link("image", "image")},
        "inpaint": {"type": "unclip.inpaint_conditioning", "latent": link("encode", "latent"),
                    "mask": link("mask", "mask")},
    }
    nodes["sampler"].update(init=link("encode", "latent"), mask=link("mask", "mask"),
                            image_cond=link("inpaint", "image_cond"))
    loom = run_loom(sess, tmp_path, nodes)

    prior = _pipe(KandinskyV22PriorPipeline, prior_dir)
    emb, neg = prior(PROMPT, num_inference_steps=3, generator=generator(2)).to_tuple()
    pipe = _pipe(KandinskyV22InpaintPipeline, inpaint_dir)
    ref = pipe(image_embeds=emb, negative_image_embeds=neg,
               image=Image.open(images / "c128.png"),
               mask_image=Image.open(images / "mask128.png"), height=128, width=128,
               num_inference_steps=3, guidance_scale=4.0, generator=generator(4),
               output_type="np").images
    assert_close(loom, as_image(ref), "kandinsky22 inpaint")


def test_grow_repaint_matches_the_pipeline_mask():
    """The repaint region grows like the inpainting pipeline's prepare_mask (six neighbours)."""
    from diffusers.pipelines.kandinsky2_2.pipeline_kandinsky2_2_inpainting import prepare_mask

    from nodes.lib.unclip import _grow_repaint

    rs = np.random.RandomState(3)
    keep = torch.from_numpy((rs.rand(2, 1, 9, 7) > 0.3).astype(np.float32))
    ref = prepare_mask(keep.clone())
    ours = 1.0 - _grow_repaint(1.0 - keep)
    assert torch.equal(ours, ref)
    assert not torch.equal(ours, keep)


def test_kandinsky_example_workflow_from_the_command_line(prior_dir, decoder_dir, tmp_path):
    """The shipped example renders with any Kandinsky 2.2 folders through the CLI contract
    (`python main.py run ... --set ...`, run in this process to spare a second torch import)."""
    from PIL import Image

    import main

    wf = EXAMPLES / "kandinsky22.json"
    doc = json.loads(wf.read_text())["nodes"]
    assert {"prior_loader", "decoder_loader", "prompt", "noise", "scheduler", "cfg",
            "prior"} <= set(doc)
    assert [n["type"] for n in doc.values()].count("image.save") == 1
    out = tmp_path / "out"
    argv = ["run", str(wf),
            "--set", f"prior_loader.path={prior_dir}",
            "--set", f"decoder_loader.path={decoder_dir}",
            "--set", f"prompt.text={PROMPT}", "--set", "noise.width=64", "--set", "noise.height=64",
            "--set", "scheduler.steps=2", "--set", "prior.steps=2", "--set", "prior.guidance=4.0",
            "--set", "cfg.scale=4.0", "--set", "noise.seed=5", "--set", "prior.seed=6",
            "--out", str(out), "--device", "cpu"]
    assert main.main(argv) == 0
    files = sorted(out.rglob("*.png"))
    assert len(files) == 1
    loom = np.asarray(Image.open(files[0]).convert("RGB"))

    from diffusers import KandinskyV22Pipeline, KandinskyV22PriorPipeline

    emb, neg = _pipe(KandinskyV22PriorPipeline, prior_dir)(
        PROMPT, num_inference_steps=2, guidance_scale=4.0, generator=generator(6)).to_tuple()
    ref = _pipe(KandinskyV22Pipeline, decoder_dir)(
        image_embeds=emb, negative_image_embeds=neg, height=64, width=64,
        num_inference_steps=2, guidance_scale=4.0, generator=generator(5),
        output_type="pil").images[0]
    diff = np.abs(loom.astype(int) - np.asarray(ref).astype(int)).max()
    print(f"[equality] kandinsky22.json via main.py: max 8-bit diff {diff}")
    assert diff <= 1  # 8-bit files: a float difference < 1e-4 may cross one rounding step


def test_decoder_seed_change_does_not_rerun_the_prior(sess, prior_dir, decoder_dir, tmp_path):
    nodes = {**_prior_nodes(prior_dir, "a prompt no other test uses", 7, 2, 4.0),
             "pos_cond": {"type": "unclip.conditioning", "embeds": link("prior", "embeds")},
             "neg_cond": {"type": "unclip.conditioning", "embeds": link("prior", "negative")},
             **_decoder_nodes(decoder_dir, 1, 2, 4.0)}
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", nodes))
    first = sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    assert first.ok, first.errors
    assert {"prior", "prompt", "sampler"} <= set(first.ran)
    graph.set_value("noise", "seed", 2)
    second = sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    assert second.ok, second.errors
    assert {"noise", "sampler", "decode"} <= set(second.ran)
    assert not {"prior", "prompt", "prior_loader", "pos_cond"} & set(second.ran)
    assert not torch.equal(first.output("decode", "image"), second.output("decode", "image"))
    graph.set_value("prior", "seed", 8)
    third = sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    assert "prior" in third.ran and "prompt" not in third.ran


def test_bad_folders_name_the_path_input(sess, decoder_dir, prior_dir, tmp_path):
    from engine.errors import ValidationError

    # preflight: a decoder folder given as the prior
    nodes = _prior_nodes(decoder_dir, PROMPT, 1, 2, 4.0)
    graph = sess.load(fx.write_workflow(tmp_path / "a.json", nodes))
    with pytest.raises(ValidationError) as info:
        sess.run(graph, ["prior"], output_dir=tmp_path / "out", device="cpu")
    problems = [p for p in info.value.problems if p.node_id == "prior_loader"]
    assert problems and problems[0].input == "path"
    assert "not a Kandinsky 2.2 prior folder" in problems[0].message

    # at run time: the layout is there but the prior holds pickled weights only
    fake = tmp_path / "fake_prior"
    shutil.copytree(prior_dir, fake)
    for f in (fake / "prior").glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    nodes = _prior_nodes(fake, PROMPT, 1, 2, 4.0)
    graph = sess.load(fx.write_workflow(tmp_path / "b.json", nodes))
    result = sess.run(graph, ["prior"], output_dir=tmp_path / "out", device="cpu")
    err = result.errors["prior_loader"]
    assert "input 'path'" in err.message and "safetensors" in err.message

    # a Kandinsky decoder UNet is not conditioned on text: the UNet Step says what to connect
    nodes = {**_decoder_nodes(decoder_dir, 1, 2, 1.0),
             "ckpt": {"type": "loaders.checkpoint", "path": str(tmp_path / "nowhere")}}
    nodes["pos_cond"] = {"type": "unclip.conditioning"}  # embeds missing
    nodes["neg_cond"] = {"type": "unclip.conditioning"}
    nodes.pop("ckpt")
    with pytest.raises(ValidationError) as info:
        sess.load(fx.write_workflow(tmp_path / "c.json", nodes))
    assert any(p.node_id == "pos_cond" and p.input == "embeds" for p in info.value.problems)


# ---- Stable unCLIP ----------------------------------------------------------------------------


def _sd_part(folder: Path, steps: int, scale: float, noise_level: int, seed: int) -> dict:
    """Text conditioning + unCLIP conditioning "unclip_cond" (its embeds the caller's) + the
    SD sampling chain. Noise continues the random stream of "unclip_cond"."""
    return {
        "loader": {"type": "loaders.stable_unclip", "path": str(folder)},
        "pos": {"type": "conditioning.text_encode", "clip": link("loader", "clip"),
                "text": PROMPT},
        "neg": {"type": "conditioning.text_encode", "clip": link("loader", "clip"),
                "text": ""},
        "unclip_cond": {"type": "unclip.noise_level", "noise_aug": link("loader", "noise_aug"),
                        "conditioning": link("pos", "conditioning"),
                        "noise_level": noise_level, "seed": seed},
        "unet": {"type": "sampling.unet_step", "model": link("loader", "model")},
        "cfg": {"type": "sampling.cfg_combine", "denoiser": link("unet", "denoiser"),
                "positive": link("unclip_cond", "conditioning"),
                "negative": link("neg", "conditioning"), "scale": scale},
        "scheduler": {"type": "sampling.scheduler", "model": link("loader", "model"),
                      "name": "default", "steps": steps},
        "noise": {"type": "latents.noise", "width": 64, "height": 64,
                  "model": link("loader", "model"), "after": link("unclip_cond", "rng")},
        "sampler": {"type": "sampling.sampler", "denoiser": link("cfg", "denoiser"),
                    "scheduler": link("scheduler", "scheduler"),
                    "noise": link("noise", "noise")},
        "decode": {"type": "latents.vae_decode", "vae": link("loader", "vae"),
                   "latent": link("sampler", "latent")},
        "save": {"type": "image.save", "images": link("decode", "image"), "prefix": "u"},
    }


def test_stable_unclip_text_to_image(sess, unclip_dir, tmp_path):
    from diffusers import StableUnCLIPPipeline

    folder = unclip_dir
    nodes = {
        **_sd_part(folder, 3, 6.0, 100, 0),
        "prompt": {"type": "unclip.prior_prompt", "prior": link("loader", "prior"),
                   "text": PROMPT},
        "prior": {"type": "unclip.prior", "prior": link("loader", "prior"),
                  "prompt": link("prompt", "prompt"), "steps": 3, "guidance": 4.0,
                  "seed": 13},
    }
    nodes["unclip_cond"].update(embeds=link("prior", "embeds"), after=link("prior", "rng"))
    loom = run_loom(sess, tmp_path, nodes)

    pipe = _pipe(StableUnCLIPPipeline, folder)
    ref = pipe(PROMPT, height=64, width=64, num_inference_steps=3, guidance_scale=6.0,
               noise_level=100, prior_num_inference_steps=3, prior_guidance_scale=4.0,
               generator=generator(13), output_type="np").images
    assert_close(loom, as_image(ref), "stable unclip txt2img")


def test_stable_unclip_image_variation(sess, images, unclip_i2i_dir, tmp_path):
    from diffusers import StableUnCLIPImg2ImgPipeline
    from PIL import Image

    folder = unclip_i2i_dir
    nodes = {
        **_sd_part(folder, 3, 6.0, 50, 21),
        "image": {"type": "image.load", "image": str(images / "b.png")},
        "encode": {"type": "unclip.image_encode",
                   "image_encoder": link("loader", "image_encoder"),
                   "image": link("image", "image")},
    }
    nodes["unclip_cond"]["embeds"] = link("encode", "embeds")
    loom = run_loom(sess, tmp_path, nodes)

    pipe = _pipe(StableUnCLIPImg2ImgPipeline, folder)
    ref = pipe(Image.open(images / "b.png"), prompt=PROMPT, height=64, width=64,
               num_inference_steps=3, guidance_scale=6.0, noise_level=50,
               generator=generator(21), output_type="np").images
    assert_close(loom, as_image(ref), "stable unclip image variation")


@pytest.mark.parametrize("name", ["kandinsky22_variations", "kandinsky22_interpolate",
                                  "kandinsky22_inpaint", "stable_unclip",
                                  "stable_unclip_variation"])
def test_the_other_examples_render(name, prior_dir, decoder_dir, inpaint_dir, unclip_dir,
                                   unclip_i2i_dir, images, tmp_path):
    """Every shipped unCLIP example runs from the command line once pointed at model folders
    and pictures (tiny ones here), and makes one picture."""
    from PIL import Image

    import main

    sets = {"noise.width": 64, "noise.height": 64, "scheduler.steps": 2}
    if name.startswith("kandinsky"):
        sets.update({"prior_loader.path": prior_dir, "decoder_loader.path": decoder_dir})
    if name == "kandinsky22_variations":
        sets["image.image"] = images / "a.png"
    elif name == "kandinsky22_interpolate":
        sets.update({"image_a.image": images / "a.png", "image_b.image": images / "b.png"})
    elif name == "kandinsky22_inpaint":
        sets.update({"decoder_loader.path": inpaint_dir, "image.image": images / "a.png",
                     "mask.image": images / "mask.png", "prior.steps": 2})
    elif name == "stable_unclip":
        sets.update({"loader.path": unclip_dir, "prior.steps": 2})
    else:
        sets.update({"loader.path": unclip_i2i_dir, "image.image": images / "b.png"})
    argv = ["run", str(EXAMPLES / f"{name}.json"), "--out", str(tmp_path), "--device", "cpu"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    assert main.main(argv) == 0
    files = sorted(tmp_path.rglob("*.png"))
    assert len(files) == 1
    picture = np.asarray(Image.open(files[0]).convert("RGB"))
    assert picture.shape == (64, 64, 3) and picture.std() > 1


def test_stable_unclip_without_the_embedding_says_what_to_connect(sess, unclip_dir,
                                                                 unclip_i2i_dir, tmp_path):
    """A plain prompt into a Stable unCLIP UNet is refused with what to connect; a folder
    without a prior is refused by the Prior Prompt, naming its `prior` input."""
    nodes = _sd_part(unclip_dir, 2, 6.0, 0, 0)
    nodes.pop("unclip_cond")
    nodes["cfg"]["positive"] = link("pos", "conditioning")
    nodes["noise"].pop("after")
    graph = sess.load(fx.write_workflow(tmp_path / "a.json", nodes))
    result = sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    assert "unCLIP Conditioning" in result.errors["sampler"].message

    nodes = {"loader": {"type": "loaders.stable_unclip", "path": str(unclip_i2i_dir)},
             "prompt": {"type": "unclip.prior_prompt", "prior": link("loader", "prior"),
                        "text": PROMPT}}
    graph = sess.load(fx.write_workflow(tmp_path / "b.json", nodes))
    result = sess.run(graph, ["prompt"], output_dir=tmp_path / "out", device="cpu")
    err = result.errors["prompt"]
    assert "input 'prior'" in err.message and "no prior" in err.message
