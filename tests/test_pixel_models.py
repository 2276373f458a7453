"""Pixel-space and class-conditional models: Loom workflows equal diffusers' DDPM / DDIM
pipelines and a class-conditional CFG loop on tiny random UNet2DModels saved as folders, and
the Pixel Noise / Pixel Decode nodes on their own."""

from __future__ import annotations

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import link, write_workflow  # noqa: E402

one_torch_thread = fx.one_torch_thread
sess = fx.sess


def _run(sess, tmp_path, nodes, outputs):
    tmp_path.mkdir(parents=True, exist_ok=True)
    graph = sess.load(write_workflow(tmp_path / "workflow.json", nodes))
    result = sess.run(graph, outputs=outputs, output_dir=tmp_path / "out", device="cpu")
    assert result.ok, {k: (e.message, e.traceback) for k, e in result.errors.items()}
    return result


def run_loom(sess, tmp_path, nodes):
    """Run a pixel workflow on the CPU; Pixel Decode's image."""
    result = _run(sess, tmp_path, nodes, None)
    assert len(result.files) == nodes["noise"]["batch"]
    return result.output("decode", "image")


def test_pixel_noise_matches_randn_tensor(sess, tmp_path):
    from diffusers.utils.torch_utils import randn_tensor

    nodes = {"noise": {"type": "pixel.noise", "seed": 7, "width": 24, "height": 16,
                       "batch": 2}}
    result = _run(sess, tmp_path, nodes, ["noise"])
    noise = result.output("noise", "noise")
    ref = randn_tensor((2, 3, 16, 24), generator=torch.Generator("cpu").manual_seed(7))
    assert noise.samples.shape == (2, 3, 16, 24)
    assert torch.equal(noise.samples, ref)
    assert noise.stream.seed == 7 and noise.stream.draws == 1
    # the stream after the draw continues where randn_tensor left the generator
    gen = torch.Generator("cpu").manual_seed(7)
    randn_tensor((2, 3, 16, 24), generator=gen)
    assert torch.equal(noise.stream.generator().get_state(), gen.get_state())


def test_pixel_noise_continues_a_stream(sess, tmp_path):
    nodes = {"first": {"type": "pixel.noise", "seed": 3, "width": 8, "height": 8},
             "second": {"type": "pixel.noise", "seed": 999, "width": 8, "height": 8,
                        "channels": 1, "after": link("first", "rng")}}
    result = _run(sess, tmp_path, nodes, ["second"])
    gen = torch.Generator("cpu").manual_seed(3)
    torch.randn((1, 3, 8, 8), generator=gen)
    ref = torch.randn((1, 1, 8, 8), generator=gen)
    assert torch.equal(result.output("second", "noise").samples, ref)
    assert result.output("second", "rng").draws == 2


def test_pixel_decode_range_and_clamp(sess, tmp_path):
    from nodes.pixel import PixelDecodeNode

    node = PixelDecodeNode()
    node.sample = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 2.0]).view(1, 1, 2, 3).repeat(2, 3, 1, 1)
    image = node.run(None)
    assert image.shape == (2, 3, 2, 3) and image.dtype == torch.float32
    assert image[0, 0].flatten().tolist() == [0.0, 0.0, 0.5, 0.75, 1.0, 1.0]
    grey = PixelDecodeNode()
    grey.sample = torch.zeros(1, 1, 4, 4)
    assert grey.run(None).shape == (1, 3, 4, 4)
    bad = PixelDecodeNode()
    bad.sample = torch.zeros(1, 4, 8, 8)
    from engine.errors import NodeInputError

    with pytest.raises(NodeInputError) as err:
        bad.run(None)
    assert err.value.input == "sample" and "VAE Decode" in str(err.value)


# ---- tiny UNet2DModel folders ---------------------------------------------------------------

SIZE = 16
CLASS_NAMES = ["red circle", "blue square", "green triangle", "null"]


def tiny_unet2d(num_class_embeds=None, seed=0):
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1,
                       block_out_channels=(16, 32), norm_num_groups=8, attention_head_dim=8,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D"),
                       num_class_embeds=num_class_embeds)


def build_pixel(folder, num_class_embeds=None, names=None, pipeline="ddpm", quiet=False):
    """A tiny DDPM (or DDIM) pipeline folder. `quiet`: the UNet's output scaled down 10x, so
    as a v predictor it keeps images unsaturated instead of drawing saturated noise."""
    import json

    from diffusers import DDIMPipeline, DDPMPipeline, DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=True,
                          variance_type="fixed_small")
    cls = DDPMPipeline if pipeline == "ddpm" else DDIMPipeline
    unet = tiny_unet2d(num_class_embeds)
    if quiet:
        with torch.no_grad():
            unet.conv_out.weight.mul_(0.1)
            unet.conv_out.bias.mul_(0.1)
    cls(unet=unet, scheduler=sched).save_pretrained(folder)
    if names is not None:
        (folder / "class_names.json").write_text(json.dumps(names))
    return folder


@pytest.fixture(scope="module")
def ddpm_folder(tmp_path_factory):
    return build_pixel(tmp_path_factory.mktemp("ddpm"))


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    return build_pixel(tmp_path_factory.mktemp("classes"), num_class_embeds=len(CLASS_NAMES),
                       names=CLASS_NAMES, pipeline="ddim")


def pixel_nodes(folder, scheduler, steps=4, eta=0.0, batch=2, seed=fx.SEED,
                label=None, scale=1.0):
    nodes = {
        "ckpt": {"type": "loaders.pixel_model", "path": str(folder)},
        "noise": {"type": "pixel.noise", "seed": seed, "width": SIZE, "height": SIZE,
                  "batch": batch, "model": link("ckpt", "model")},
        "sched": {"type": "sampling.scheduler", "model": link("ckpt", "model"),
                  "name": scheduler, "steps": steps, "eta": eta},
        "unet": {"type": "sampling.unet_step", "model": link("ckpt", "model")},
        "sampler": {"type": "sampling.sampler", "denoiser": link("cfg", "denoiser"),
                    "scheduler": link("sched", "scheduler"), "noise": link("noise", "noise")},
        "decode": {"type": "pixel.decode", "sample": link("sampler", "latent")},
        "save": {"type": "image.save", "images": link("decode", "image"), "prefix": "px"},
    }
    if label is None:
        nodes["cond"] = {"type": "conditioning.unconditional"}
        nodes["cfg"] = {"type": "sampling.cfg_combine", "denoiser": link("unet", "denoiser"),
                        "positive": link("cond", "conditioning"), "scale": 1.0}
    else:
        nodes["cond"] = {"type": "conditioning.class_label", "model": link("ckpt", "model"),
                         "label": label}
        nodes["cfg"] = {"type": "sampling.cfg_combine", "denoiser": link("unet", "denoiser"),
                        "positive": link("cond", "conditioning"),
                        "negative": link("cond", "null"), "scale": scale}
    return nodes


def test_ddpm_pipeline_equal(sess, ddpm_folder, tmp_path):
    from diffusers import DDPMPipeline

    loom = run_loom(sess, tmp_path, pixel_nodes(ddpm_folder, "ddpm", steps=5))
    pipe = DDPMPipeline.from_pretrained(ddpm_folder)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=fx.generator(), num_inference_steps=5,
               output_type="np").images
    fx.assert_close(loom, fx.as_image(ref), "ddpm pipeline")
    # the checkpoint's own scheduler ("default") is the same DDPM schedule
    again = run_loom(sess, tmp_path / "default", pixel_nodes(ddpm_folder, "default", steps=5))
    assert torch.equal(again, loom)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_pipeline_equal(sess, ddpm_folder, tmp_path, eta):
    from diffusers import DDIMPipeline, DDPMPipeline

    loom = run_loom(sess, tmp_path, pixel_nodes(ddpm_folder, "ddim", steps=4, eta=eta))
    ddpm = DDPMPipeline.from_pretrained(ddpm_folder)
    pipe = DDIMPipeline(unet=ddpm.unet, scheduler=ddpm.scheduler)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(batch_size=2, generator=fx.generator(), num_inference_steps=4, eta=eta,
               output_type="np").images
    fx.assert_close(loom, fx.as_image(ref), f"ddim pipeline eta {eta}")


def test_class_conditional_cfg_equal_to_reference_loop(sess, class_folder, tmp_path):
    from diffusers import DDIMScheduler, UNet2DModel
    from diffusers.utils.torch_utils import randn_tensor

    label, null, scale, steps = 1, len(CLASS_NAMES) - 1, 3.0, 4
    loom = run_loom(sess, tmp_path, pixel_nodes(class_folder, "ddim", steps=steps,
                                                   label="Blue Square ", scale=scale))
    unet = UNet2DModel.from_pretrained(class_folder / "unet").eval()
    sched = DDIMScheduler.from_pretrained(class_folder / "scheduler")
    sched.set_timesteps(steps)
    gen = fx.generator()
    x = randn_tensor((2, 3, SIZE, SIZE), generator=gen)
    labels = torch.tensor([null, null, label, label])
    with torch.no_grad():
        for t in sched.timesteps:
            uncond, cond = unet(torch.cat([x, x]), t, class_labels=labels).sample.chunk(2)
            x = sched.step(uncond + scale * (cond - uncond), t, x, eta=0.0,
                           generator=gen).prev_sample
    ref = (x / 2 + 0.5).clamp(0, 1)
    fx.assert_close(loom, ref, "class-conditional cfg")
    # the label matters, and the index gives what the name gives
    other = run_loom(sess, tmp_path / "other", pixel_nodes(
        class_folder, "ddim", steps=steps, label="2", scale=scale))
    assert (other - loom).abs().max() > 1e-3
    same = run_loom(sess, tmp_path / "index", pixel_nodes(
        class_folder, "ddim", steps=steps, label="1", scale=scale))
    assert torch.equal(same, loom)


def test_loader_exposes_class_names(sess, class_folder, tmp_path):
    nodes = {"ckpt": {"type": "loaders.pixel_model", "path": str(class_folder)}}
    result = _run(sess, tmp_path, nodes, ["ckpt"])
    model = result.output("ckpt", "model")
    assert model.family == "pixel" and model.prediction_type == "epsilon"
    assert model.extra["class_names"] == CLASS_NAMES and model.extra["num_classes"] == 4
    assert result.output("ckpt", "classes").splitlines()[1] == "1: blue square"


def _error(sess, tmp_path, nodes, node_id):
    tmp_path.mkdir(parents=True, exist_ok=True)
    graph = sess.load(write_workflow(tmp_path / "workflow.json", nodes))
    result = sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    assert not result.ok
    return result.errors[node_id]


def test_class_label_errors_name_the_input(sess, class_folder, ddpm_folder, tmp_path):
    err = _error(sess, tmp_path / "a", pixel_nodes(class_folder, "ddim", label="purple blob",
                                                   scale=3.0), "cond")
    assert err.input == "label" and "blue square" in err.message and "3: null" in err.message
    err = _error(sess, tmp_path / "b", pixel_nodes(class_folder, "ddim", label="7"), "cond")
    assert err.input == "label" and "0..3" in err.message
    err = _error(sess, tmp_path / "c", pixel_nodes(ddpm_folder, "ddim", label="0"), "cond")
    assert err.input == "model" and "Unconditional" in err.message
    # a class-conditional model without a label is refused by name, not a diffusers traceback
    err = _error(sess, tmp_path / "d", pixel_nodes(class_folder, "ddim"), "sampler")
    assert "Class Label" in err.message


def test_loader_refuses_a_text_to_image_folder(sess, tmp_path):
    sd = fx.build_sd(tmp_path / "sd")
    nodes = {"ckpt": {"type": "loaders.pixel_model", "path": str(sd)}}
    graph = sess.load(write_workflow(tmp_path / "workflow.json", nodes))
    from engine.errors import ValidationError

    with pytest.raises(ValidationError) as err:
        sess.run(graph, outputs=["ckpt"], output_dir=tmp_path / "out", device="cpu")
    assert "Load Checkpoint" in str(err.value)


def test_load_checkpoint_points_to_load_pixel_model(sess, ddpm_folder, tmp_path):
    from nodes.lib.model_info import describe

    nodes = {"ckpt": {"type": "loaders.checkpoint", "path": str(ddpm_folder)}}
    graph = sess.load(write_workflow(tmp_path / "workflow.json", nodes))
    result = sess.run(graph, outputs=["ckpt"], output_dir=tmp_path / "out", device="cpu")
    err = result.errors["ckpt"]
    assert err.input == "path" and "Load Pixel Model" in err.message
    assert describe("checkpoints", ddpm_folder)["family"] == "pixel"
