"""The proof: Loom workflows give the same images as the diffusers pipelines they imitate.

Each case saves tiny random-weight components as a diffusers folder, runs a Loom workflow file
through the engine's Python API and the matching diffusers pipeline with the same seed and
settings, and compares the decoded images (CPU, fp32) within 1e-4.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import (  # noqa: E402
    PROMPT,
    SEED,
    as_image,
    assert_close,
    base_nodes,
    generator,
    link,
    reg,
    run_loom,
    txt2img_nodes,
    use_scheduler,
)

one_torch_thread = fx.one_torch_thread  # fixtures shared with the other equality tests
sess = fx.sess


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return fx.build_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A 64x64 RGB test image and a mask (white square = repaint) as PNG files."""
    from PIL import Image

    d = tmp_path_factory.mktemp("img")
    rs = np.random.RandomState(0)
    arr = (rs.rand(64, 64, 3) * 255).astype(np.uint8)
    arr[16:48, 16:48] = (220, 40, 40)
    Image.fromarray(arr).save(d / "image.png")
    mask = np.zeros((64, 64), np.uint8)
    mask[8:40, 24:56] = 255
    Image.fromarray(mask, "L").save(d / "mask.png")
    return d / "image.png", d / "mask.png"


@pytest.mark.parametrize("scheduler", ["ddim", "euler_ancestral", "dpmpp_2m_karras", "unipc"])
def test_sd_txt2img(sess, sd_folder, tmp_path, scheduler):
    from diffusers import StableDiffusionPipeline

    loom = run_loom(sess, tmp_path, txt2img_nodes(sd_folder, scheduler))
    pipe = use_scheduler(StableDiffusionPipeline.from_pretrained(sd_folder), scheduler)
    ref = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.0, height=64, width=64,
               generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), f"sd txt2img {scheduler}")
    other = run_loom(sess, tmp_path / "other",
                     txt2img_nodes(sd_folder, scheduler, seed=SEED + 1))
    assert (other - loom).abs().max() > 1e-3  # the seed matters


def test_sd_negative_prompt_and_rescale(sess, sd_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    nodes = txt2img_nodes(sd_folder, "euler", negative="blurry, dark", scale=5.0, rescale=0.7)
    loom = run_loom(sess, tmp_path, nodes)
    pipe = use_scheduler(StableDiffusionPipeline.from_pretrained(sd_folder), "euler")
    ref = pipe(PROMPT, negative_prompt="blurry, dark", num_inference_steps=3,
               guidance_scale=5.0, guidance_rescale=0.7, height=64, width=64,
               generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), "sd negative prompt + guidance rescale 0.7")


def test_sd_no_guidance_at_scale_1(sess, sd_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    loom = run_loom(sess, tmp_path, txt2img_nodes(sd_folder, "ddim", scale=1.0))
    pipe = use_scheduler(StableDiffusionPipeline.from_pretrained(sd_folder), "ddim")
    ref = pipe(PROMPT, num_inference_steps=3, guidance_scale=1.0, height=64, width=64,
               generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), "sd scale 1 (no unconditional pass)")


def test_sd_img2img(sess, sd_folder, images, tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline
    from PIL import Image

    image_path, _ = images
    nodes = txt2img_nodes(sd_folder, "ddim", steps=5)
    nodes["load"] = {"type": "image.load", "image": str(image_path)}
    nodes["encode"] = {"type": "latents.vae_encode", "vae": link("ckpt", "vae"),
                       "image": link("load", "image"), "seed": SEED}
    nodes["noise"]["after"] = link("encode", "rng")
    nodes["sched"]["strength"] = 0.6
    nodes["sampler"]["init"] = link("encode", "latent")
    loom = run_loom(sess, tmp_path, nodes)
    pipe = use_scheduler(StableDiffusionImg2ImgPipeline.from_pretrained(sd_folder), "ddim")
    ref = pipe(PROMPT, image=Image.open(image_path), strength=0.6, num_inference_steps=5,
               guidance_scale=7.0, generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), "sd img2img strength 0.6")


def test_sd_inpaint_9_channel(sess, images, tmp_path_factory, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    folder = fx.build_sd(tmp_path_factory.mktemp("sd_inpaint"), in_channels=9, inpaint=True)
    image_path, mask_path = images
    nodes = txt2img_nodes(folder, "ddim", family="sd_inpaint")
    nodes["load"] = {"type": "image.load", "image": str(image_path)}
    nodes["mask"] = {"type": "image.load_mask", "image": str(mask_path)}
    nodes["prep"] = {"type": "inpaint.prepare", "vae": link("ckpt", "vae"),
                     "image": link("load", "image"), "mask": link("mask", "mask"),
                     "after": link("noise", "rng")}
    nodes["sampler"]["image_cond"] = link("prep", "image_cond")
    loom = run_loom(sess, tmp_path, nodes)
    pipe = use_scheduler(StableDiffusionInpaintPipeline.from_pretrained(folder), "ddim")
    ref = pipe(PROMPT, image=Image.open(image_path), mask_image=Image.open(mask_path),
               num_inference_steps=3, guidance_scale=7.0, height=64, width=64,
               generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), "sd inpaint 9-channel")


def test_sd_inpaint_4_channel_blend(sess, sd_folder, images, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline
    from PIL import Image

    image_path, mask_path = images
    nodes = txt2img_nodes(sd_folder, "ddim")
    nodes["load"] = {"type": "image.load", "image": str(image_path)}
    nodes["mask"] = {"type": "image.load_mask", "image": str(mask_path)}
    nodes["encode"] = {"type": "latents.vae_encode", "vae": link("ckpt", "vae"),
                       "image": link("load", "image"), "seed": SEED}
    nodes["noise"]["after"] = link("encode", "rng")
    nodes["sampler"]["init"] = link("encode", "latent")
    nodes["sampler"]["mask"] = link("mask", "mask")
    loom = run_loom(sess, tmp_path, nodes)
    pipe = use_scheduler(StableDiffusionInpaintPipeline.from_pretrained(sd_folder), "ddim")
    ref = pipe(PROMPT, image=Image.open(image_path), mask_image=Image.open(mask_path),
               num_inference_steps=3, guidance_scale=7.0, height=64, width=64,
               generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), "sd inpaint 4-channel blend")


def test_sd2_v_prediction(sess, tmp_path_factory, tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = fx.build_sd(tmp_path_factory.mktemp("sd2"), prediction_type="v_prediction")
    loom = run_loom(sess, tmp_path, txt2img_nodes(folder, "ddim", family="sd2", rescale=0.5))
    pipe = use_scheduler(StableDiffusionPipeline.from_pretrained(folder), "ddim")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    ref = pipe(PROMPT, num_inference_steps=3, guidance_scale=7.0, guidance_rescale=0.5,
               height=64, width=64, generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), "sd2 v-prediction (+ rescale 0.5)")


@pytest.fixture(scope="module")
def sdxl_folders(tmp_path_factory):
    return (fx.build_sdxl(tmp_path_factory.mktemp("sdxl")),
            fx.build_sdxl(tmp_path_factory.mktemp("sdxl_refiner"), refiner=True))


def test_sdxl_txt2img_micro_conditioning(sess, sdxl_folders, tmp_path):
    from diffusers import StableDiffusionXLPipeline

    base, _ = sdxl_folders
    nodes = txt2img_nodes(base, "euler", family="sdxl", negative="ugly",
                          original_size="96,80", crops="4,8", target_size="64,64")
    loom = run_loom(sess, tmp_path, nodes)
    pipe = use_scheduler(StableDiffusionXLPipeline.from_pretrained(base), "euler")
    ref = pipe(PROMPT, negative_prompt="ugly", num_inference_steps=3, guidance_scale=7.0,
               height=64, width=64, original_size=(96, 80), crops_coords_top_left=(4, 8),
               target_size=(64, 64), generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), "sdxl txt2img with micro-conditioning")


def test_sdxl_base_to_refiner(sess, sdxl_folders, tmp_path):
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline

    base, refiner = sdxl_folders
    nodes = txt2img_nodes(base, "euler", steps=5, family="sdxl", negative="ugly")
    nodes["sched"]["end"] = 0.8
    nodes.update(fx.model_nodes(reg(), refiner, "sdxl_refiner", PROMPT, "ugly", suffix="2"))
    nodes.update({
        "unet2": {"type": "sampling.unet_step", "model": link("ckpt2", "model")},
        "cfg2": {"type": "sampling.cfg_combine", "denoiser": link("unet2", "denoiser"),
                 "positive": fx.cond_link(nodes, "pos2", reg()),
                 "negative": fx.cond_link(nodes, "neg2", reg()), "scale": 7.0},
        "sched2": {"type": "sampling.scheduler", "model": link("ckpt2", "model"),
                   "name": "euler", "steps": 5, "start": 0.8},
        "sampler2": {"type": "sampling.sampler", "denoiser": link("cfg2", "denoiser"),
                     "scheduler": link("sched2", "scheduler"),
                     "init": link("sampler", "latent")},
    })
    nodes["decode"]["latent"] = link("sampler2", "latent")
    loom = run_loom(sess, tmp_path, nodes)
    pipe = use_scheduler(StableDiffusionXLPipeline.from_pretrained(base), "euler")
    latents = pipe(PROMPT, negative_prompt="ugly", num_inference_steps=5, denoising_end=0.8,
                   guidance_scale=7.0, height=64, width=64, generator=generator(),
                   output_type="latent").images
    pipe2 = use_scheduler(StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner), "euler")
    ref = pipe2(PROMPT, negative_prompt="ugly", image=latents, num_inference_steps=5,
                denoising_start=0.8, guidance_scale=7.0, generator=generator(),
                output_type="np").images
    assert_close(loom, as_image(ref), "sdxl base (end 0.8) -> refiner (start 0.8)")


def test_sd_x4_upscaler(sess, tmp_path_factory, tmp_path):
    from diffusers import StableDiffusionUpscalePipeline
    from PIL import Image

    folder = fx.build_x4(tmp_path_factory.mktemp("x4"))
    rs = np.random.RandomState(1)
    low = tmp_path / "low.png"
    tmp_path.mkdir(parents=True, exist_ok=True)
    Image.fromarray((rs.rand(16, 16, 3) * 255).astype(np.uint8)).save(low)
    nodes = base_nodes(folder, "sd_x4_upscaler", negative="noisy")
    nodes.update({
        "load": {"type": "image.load", "image": str(low)},
        "x4": {"type": "upscale.x4", "model": link("ckpt", "model"),
               "image": link("load", "image"), "noise_level": 20, "seed": SEED},
        "sched": {"type": "sampling.scheduler", "model": link("ckpt", "model"),
                  "name": "ddim", "steps": 3},
        "cfg": {"type": "sampling.cfg_combine", "denoiser": link("unet", "denoiser"),
                "positive": fx.cond_link(nodes, "pos", reg()),
                "negative": fx.cond_link(nodes, "neg", reg()),
                "scale": 9.0},
        "sampler": {"type": "sampling.sampler", "denoiser": link("cfg", "denoiser"),
                    "scheduler": link("sched", "scheduler"), "noise": link("x4", "noise"),
                    "image_cond": link("x4", "image_cond")},
    })
    loom = run_loom(sess, tmp_path, nodes)
    pipe = use_scheduler(StableDiffusionUpscalePipeline.from_pretrained(folder), "ddim")
    ref = pipe(PROMPT, negative_prompt="noisy", image=Image.open(low), num_inference_steps=3,
               guidance_scale=9.0, noise_level=20, generator=generator(),
               output_type="np").images
    assert loom.shape[-1] == 64  # 16 px -> 64 px
    assert_close(loom, as_image(ref), "sd x4 upscaler")


def test_sd_latent_x2_upscaler(sess, images, tmp_path_factory, tmp_path):
    from diffusers import StableDiffusionLatentUpscalePipeline
    from PIL import Image

    folder = fx.build_latent_x2(tmp_path_factory.mktemp("latent_x2"))
    small = images[0]
    nodes = base_nodes(folder, "sd_latent_upscaler", negative="noisy")
    nodes.update({
        "load": {"type": "image.load", "image": str(small)},
        "encode": {"type": "latents.vae_encode", "vae": link("ckpt", "vae"),
                   "image": link("load", "image"), "seed": SEED},
        "sampler": {"type": "upscale.latent_x2", "model": link("ckpt", "model"),
                    "positive": fx.cond_link(nodes, "pos", reg()),
                    "negative": fx.cond_link(nodes, "neg", reg()),
                    "latent": link("encode", "latent"), "after": link("encode", "rng"),
                    "steps": 3, "scale": 9.0},
    })
    del nodes["unet"]
    loom = run_loom(sess, tmp_path, nodes)
    pipe = StableDiffusionLatentUpscalePipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, negative_prompt="noisy", image=Image.open(small), num_inference_steps=3,
               guidance_scale=9.0, generator=generator(), output_type="np").images
    assert loom.shape[-1] == 128  # 64 px -> 128 px
    assert_close(loom, as_image(ref), "sd latent x2 upscaler")
