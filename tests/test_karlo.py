"""DALL·E 2's literal layout (Karlo, diffusers' UnCLIPPipeline) as a Loom graph equals the
pipeline: prior -> text projection -> 64 px decoder (learned variance) -> super_res_first for
all steps but the last, super_res_last for the last, all from one seeded random stream.

Tiny random-weight parts are built from configs, saved as one UnCLIPPipeline folder, loaded
part by part by Load Karlo, and run through the engine; the pipeline gets the same parts and
seed. CPU, fp32, within 1e-4.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import as_image, assert_close, generator, link, run_loom  # noqa: E402

one_torch_thread = fx.one_torch_thread
sess = fx.sess

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "resources" / "workflows" / "examples" / "karlo_unclip.json"
PROMPT = "a red circle on a blue background"
DIM = 32  # CLIP embedding size
LOW = 16  # the decoder's sample size
HIGH = 32  # the super-resolution UNets' sample size


# ---- tiny parts -------------------------------------------------------------------------------


def _prior():
    from diffusers import PriorTransformer

    torch.manual_seed(2)
    prior = PriorTransformer(num_attention_heads=2, attention_head_dim=12, embedding_dim=DIM,
                             num_layers=1)
    with torch.no_grad():  # a fresh prior's CLIP statistics are zero: make them count
        prior.clip_std.copy_(torch.rand(1, DIM) + 0.5)
        prior.clip_mean.copy_(torch.randn(1, DIM))
    return prior


def _text_proj():
    from diffusers.pipelines.deprecated.unclip.text_proj import UnCLIPTextProjModel

    torch.manual_seed(3)
    proj = UnCLIPTextProjModel(clip_embeddings_dim=DIM, time_embed_dim=64,
                               cross_attention_dim=32)
    with torch.no_grad():  # starts at zero: make the negative's embedding count
        proj.learned_classifier_free_guidance_embeddings.copy_(torch.randn(DIM))
    return proj


def _decoder():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(4)
    return UNet2DConditionModel(
        sample_size=LOW, in_channels=3, out_channels=6,
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", block_out_channels=(16, 32),
        layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
        resnet_time_scale_shift="scale_shift", class_embed_type="identity", norm_num_groups=8)


def _super_res(seed: int):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=HIGH, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("ResnetDownsampleBlock2D", "ResnetDownsampleBlock2D"),
        up_block_types=("ResnetUpsampleBlock2D", "ResnetUpsampleBlock2D"),
        in_channels=6, out_channels=3, norm_num_groups=8)


def build_karlo(folder: Path):
    """The tiny UnCLIPPipeline, saved to `folder` (its parts are also the reference's)."""
    from diffusers import UnCLIPPipeline, UnCLIPScheduler

    pipe = UnCLIPPipeline(
        prior=_prior(), decoder=_decoder(), text_encoder=fx.tiny_text_encoder(projection=DIM),
        tokenizer=fx.tokenizer(), text_proj=_text_proj(), super_res_first=_super_res(5),
        super_res_last=_super_res(6),
        prior_scheduler=UnCLIPScheduler(variance_type="fixed_small_log",
                                        prediction_type="sample", num_train_timesteps=1000,
                                        clip_sample_range=5.0),
        decoder_scheduler=UnCLIPScheduler(variance_type="learned_range",
                                          prediction_type="epsilon", num_train_timesteps=1000),
        super_res_scheduler=UnCLIPScheduler(variance_type="fixed_small_log",
                                            prediction_type="epsilon",
                                            num_train_timesteps=1000))
    pipe.save_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def karlo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("karlo")
    return folder, build_karlo(folder)


def karlo_nodes(folder: Path, seed: int, prior_steps: int, decoder_steps: int, sr_steps: int,
                prior_guidance: float, decoder_guidance: float, prompt: str = PROMPT) -> dict:
    return {
        "loader": {"type": "loaders.karlo", "path": str(folder), "dtype": "fp32"},
        "prompt": {"type": "unclip.prior_prompt", "prior": link("loader", "prior"),
                   "text": prompt},
        "prior": {"type": "unclip.prior", "prior": link("loader", "prior"),
                  "prompt": link("prompt", "prompt"), "steps": prior_steps,
                  "guidance": prior_guidance, "seed": seed},
        "cond": {"type": "unclip.karlo_conditioning", "decoder": link("loader", "decoder"),
                 "prompt": link("prompt", "prompt"), "embeds": link("prior", "embeds")},
        "unet": {"type": "sampling.unet_step", "model": link("loader", "decoder")},
        "cfg": {"type": "sampling.cfg_combine", "denoiser": link("unet", "denoiser"),
                "positive": link("cond", "positive"), "negative": link("cond", "negative"),
                "scale": decoder_guidance},
        "scheduler": {"type": "sampling.scheduler", "model": link("loader", "decoder"),
                      "name": "default", "steps": decoder_steps},
        "noise": {"type": "pixel.noise", "width": LOW, "height": LOW,
                  "model": link("loader", "decoder"), "after": link("prior", "rng")},
        "sampler": {"type": "sampling.sampler", "denoiser": link("cfg", "denoiser"),
                    "scheduler": link("scheduler", "scheduler"), "noise": link("noise", "noise")},
        "sr_cond": {"type": "unclip.karlo_super_resolution",
                    "low_res": link("sampler", "latent"), "width": HIGH, "height": HIGH},
        "sr_noise": {"type": "pixel.noise", "width": HIGH, "height": HIGH,
                     "model": link("loader", "super_res_first"), "after": link("sampler", "rng")},
        "uncond": {"type": "conditioning.unconditional"},
        "sr_unet_first": {"type": "sampling.unet_step", "model": link("loader", "super_res_first")},
        "sr_unet_last": {"type": "sampling.unet_step", "model": link("loader", "super_res_last")},
        "sr_cfg_first": {"type": "sampling.cfg_combine",
                         "denoiser": link("sr_unet_first", "denoiser"),
                         "positive": link("uncond", "conditioning"), "scale": 1.0},
        "sr_cfg_last": {"type": "sampling.cfg_combine",
                        "denoiser": link("sr_unet_last", "denoiser"),
                        "positive": link("uncond", "conditioning"), "scale": 1.0},
        "sr_switch": {"type": "sampling.last_steps", "first": link("sr_cfg_first", "denoiser"),
                      "last": link("sr_cfg_last", "denoiser"), "steps": 1},
        "sr_scheduler": {"type": "sampling.scheduler",
                         "model": link("loader", "super_res_first"), "name": "default",
                         "steps": sr_steps},
        "sr_sampler": {"type": "sampling.sampler", "denoiser": link("sr_switch", "denoiser"),
                       "scheduler": link("sr_scheduler", "scheduler"),
                       "noise": link("sr_noise", "noise"),
                       "image_cond": link("sr_cond", "image_cond")},
        "decode": {"type": "pixel.decode", "sample": link("sr_sampler", "latent")},
        "save": {"type": "image.save", "images": link("decode", "image"), "prefix": "karlo"},
    }


# ---- equality with UnCLIPPipeline ---------------------------------------------------------------


@pytest.mark.parametrize("seed,steps,guidance", [(7, (3, 3, 3), (4.0, 8.0)),
                                                 (11, (2, 4, 5), (2.0, 3.0))])
def test_karlo_graph_equals_unclip_pipeline(sess, karlo, tmp_path, seed, steps, guidance):
    folder, pipe = karlo
    nodes = karlo_nodes(folder, seed, *steps, *guidance)
    loom = run_loom(sess, tmp_path, nodes)
    ref = pipe(PROMPT, prior_num_inference_steps=steps[0], decoder_num_inference_steps=steps[1],
               super_res_num_inference_steps=steps[2], prior_guidance_scale=guidance[0],
               decoder_guidance_scale=guidance[1], generator=generator(seed),
               output_type="np").images
    assert loom.shape == (1, 3, HIGH, HIGH)
    assert_close(loom, as_image(ref), f"karlo seed {seed} steps {steps} guidance {guidance}")


def test_super_res_last_runs_the_last_step_only(sess, karlo, tmp_path):
    """The last step's model matters (super_res_last), and only the last: a pipeline whose
    super_res_last is super_res_first gives another image, and Loom with `first` for every
    step (Last Steps Denoiser with both inputs the same) equals that pipeline."""
    from diffusers import UnCLIPPipeline

    folder, pipe = karlo
    nodes = karlo_nodes(folder, 3, 2, 2, 3, 4.0, 4.0)
    nodes["sr_switch"]["last"] = link("sr_cfg_first", "denoiser")
    loom = run_loom(sess, tmp_path, nodes)
    parts = dict(pipe.components)
    parts["super_res_last"] = parts["super_res_first"]
    same = UnCLIPPipeline(**parts)
    same.set_progress_bar_config(disable=True)
    kwargs = dict(prior_num_inference_steps=2, decoder_num_inference_steps=2,
                  super_res_num_inference_steps=3, prior_guidance_scale=4.0,
                  decoder_guidance_scale=4.0, output_type="np")
    ref_same = same(PROMPT, generator=generator(3), **kwargs).images
    ref_real = pipe(PROMPT, generator=generator(3), **kwargs).images
    assert_close(loom, as_image(ref_same), "karlo, super_res_first for every step")
    assert (loom - as_image(ref_real)).abs().max().item() > 1e-3


# ---- the Sampler's random stream --------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["default", "ddim"])
def test_sampler_rng_output_is_the_stream_after_sampling(sess, karlo, tmp_path, scheduler):
    """The Sampler's `rng` output: after the noise draw and, for a stochastic scheduler
    (UnCLIPScheduler draws variance noise on every step but the last), one draw per step; a
    deterministic one (DDIM, eta 0) leaves the noise's stream as it was."""
    folder, _ = karlo
    steps = 3
    nodes = {
        "loader": {"type": "loaders.karlo", "path": str(folder), "dtype": "fp32"},
        "uncond": {"type": "conditioning.unconditional"},
        "unet": {"type": "sampling.unet_step", "model": link("loader", "super_res_first")},
        "cfg": {"type": "sampling.cfg_combine", "denoiser": link("unet", "denoiser"),
                "positive": link("uncond", "conditioning"), "scale": 1.0},
        "scheduler": {"type": "sampling.scheduler", "model": link("loader", "super_res_first"),
                      "name": scheduler, "steps": steps},
        "noise": {"type": "pixel.noise", "seed": 5, "width": HIGH, "height": HIGH,
                  "model": link("loader", "super_res_first")},
        "img": {"type": "image.load", "image": str(_png(tmp_path))},
        "sr_cond": {"type": "unclip.karlo_super_resolution", "image": link("img", "image"),
                    "width": HIGH, "height": HIGH},
        "sampler": {"type": "sampling.sampler", "denoiser": link("cfg", "denoiser"),
                    "scheduler": link("scheduler", "scheduler"), "noise": link("noise", "noise"),
                    "image_cond": link("sr_cond", "image_cond")},
    }
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", nodes))
    result = sess.run(graph, output_dir=tmp_path / "out", device="cpu", outputs=["sampler"])
    assert result.ok, {k: (e.message, e.traceback) for k, e in result.errors.items()}
    after = result.output("sampler", "rng")
    gen = generator(5)
    torch.randn((1, 3, HIGH, HIGH), generator=gen)  # Pixel Noise's draw
    if scheduler == "default":
        for _ in range(steps - 1):
            torch.randn((1, 3, HIGH, HIGH), generator=gen)
    assert torch.equal(after.state, gen.get_state())
    assert after.seed == 5


def _png(folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    path = folder / "low.png"
    arr = (np.random.RandomState(0).rand(LOW, LOW, 3) * 255).astype(np.uint8)
    Image.fromarray(arr).save(path)
    return path


# ---- errors -----------------------------------------------------------------------------------


def test_bad_folder_is_an_error_on_path(sess, karlo, tmp_path):
    from engine.errors import ValidationError

    folder, _ = karlo
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "super_res_last")
    nodes = karlo_nodes(broken, 1, 2, 2, 2, 4.0, 4.0)
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", nodes))
    with pytest.raises(ValidationError) as err:  # the pre-run check, before anything loads
        sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    text = str(err.value)
    assert "path" in text and "super_res_last/" in text

    # past the pre-run check (all subfolders there) but not a Karlo decoder: at run time
    cfg_file = broken / "decoder" / "config.json"
    shutil.copytree(folder / "super_res_last", broken / "super_res_last")
    cfg = json.loads(cfg_file.read_text())
    cfg["class_embed_type"] = None
    cfg_file.write_text(json.dumps(cfg))
    result = sess.run(graph, output_dir=tmp_path / "out2", device="cpu")
    assert not result.ok
    error = result.errors["loader"]
    assert error.input == "path" and "not a Karlo decoder" in error.message


def test_conditioning_refuses_a_decoder_without_text_proj(sess, karlo, tmp_path):
    folder, _ = karlo
    nodes = karlo_nodes(folder, 1, 2, 2, 2, 4.0, 4.0)
    nodes["cond"]["decoder"] = link("loader", "super_res_first")
    graph = sess.load(fx.write_workflow(tmp_path / "wf.json", nodes))
    result = sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    assert not result.ok
    error = result.errors["cond"]
    assert error.input == "decoder" and "text projection" in error.message


# ---- the example and the CLI --------------------------------------------------------------------


def test_cli_runs_the_example_and_writes_a_png(karlo, tmp_path):
    folder, _ = karlo
    out = tmp_path / "out"
    sets = {"loader.path": folder, "prompt.text": "a big red cat", "prior.steps": 2,
            "prior.seed": 3, "scheduler.steps": 2, "noise.width": LOW, "noise.height": LOW,
            "sr_cond.width": HIGH, "sr_cond.height": HIGH, "sr_noise.width": HIGH,
            "sr_noise.height": HIGH, "sr_scheduler.steps": 2}
    cmd = [sys.executable, "main.py", "run", str(EXAMPLE), "--out", str(out)]
    for target, value in sets.items():
        cmd += ["--set", f"{target}={value}"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "HF_HUB_OFFLINE": "1",
                               "QT_QPA_PLATFORM": "offscreen"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    pngs = list(out.rglob("*.png"))
    assert len(pngs) == 1
    from PIL import Image

    assert Image.open(pngs[0]).size == (HIGH, HIGH)
