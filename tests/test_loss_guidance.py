"""Loss Guidance: the predicted clean image comes from the model output and the schedule alone
(checked against the schedulers' own numbers), scale 0 is exactly the unguided graph for every
scheduler, a nonzero scale moves the images towards the loss's target (pixel and latent
models), and the built-in colour_guidance.json workflow keeps its contract."""

from __future__ import annotations

import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from nodes.lib.schedules import SCHEDULER_NAMES  # noqa: E402
from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import link, write_workflow  # noqa: E402
from tests.test_pixel_models import build_pixel, pixel_nodes  # noqa: E402

one_torch_thread = fx.one_torch_thread
sess = fx.sess

BLUE = (0.0, 0.0, 1.0)


def _run(sess, tmp_path, nodes, outputs=("decode",)):
    tmp_path.mkdir(parents=True, exist_ok=True)
    graph = sess.load(write_workflow(tmp_path / "workflow.json", nodes))
    result = sess.run(graph, outputs=list(outputs), output_dir=tmp_path / "out", device="cpu")
    assert result.ok, {k: (e.message, e.traceback) for k, e in result.errors.items()}
    return result


def _errors(sess, tmp_path, nodes):
    tmp_path.mkdir(parents=True, exist_ok=True)
    graph = sess.load(write_workflow(tmp_path / "workflow.json", nodes))
    result = sess.run(graph, outputs=["decode"], output_dir=tmp_path / "out", device="cpu")
    assert not result.ok
    return result.errors


def colour_distance(image, rgb=BLUE) -> float:
    """Squared distance of the images' mean colour to a colour (the Colour Loss, clamped)."""
    target = torch.tensor(rgb)
    return float(((image.clamp(0, 1).mean(dim=(2, 3)) - target) ** 2).mean())


def pixel_distance(image, rgb=BLUE) -> float:
    """Mean squared distance of every pixel to a colour (the Colour Loss in 'pixels' mode)."""
    target = torch.tensor(rgb).view(1, 3, 1, 1)
    return float(((image.clamp(0, 1) - target) ** 2).mean())


def blue_share(image) -> float:
    rgb = image.clamp(0, 1)
    return float((rgb[:, 2] / (rgb.sum(1) + 1e-6)).mean())


# ---- the schedule arithmetic ------------------------------------------------------------------


@pytest.mark.parametrize("config", [
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
    dict(beta_schedule="linear"),
    dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
         rescale_betas_zero_snr=True, prediction_type="v_prediction"),
])
def test_alpha_at_timestep_matches_the_schedulers(config):
    """ᾱ at integer timesteps is the schedule's; at the fractional timesteps of Karras sigmas
    it is 1/(1+σ²) of the σ the Euler scheduler scales the sample with."""
    from diffusers import DDIMScheduler, EulerDiscreteScheduler

    from nodes.lib.guidance import alpha_cumprod_at, log_sigmas

    table = log_sigmas(config)
    ddim = DDIMScheduler(**config)
    for t in (0, 1, 250, 500, 998):
        assert alpha_cumprod_at(table, t) == pytest.approx(float(ddim.alphas_cumprod[t]),
                                                           rel=1e-6)
    euler = EulerDiscreteScheduler(**config, use_karras_sigmas=True)
    euler.set_timesteps(7)
    assert any(float(t) != round(float(t)) for t in euler.timesteps)  # fractional ones
    for t, sigma in zip(euler.timesteps, euler.sigmas[:-1]):
        want = 1.0 / (1.0 + float(sigma) ** 2)
        assert alpha_cumprod_at(table, t) == pytest.approx(want, rel=1e-4)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_predicted_clean_image_is_the_schedulers(prediction):
    """x̂0 equals the DDIM scheduler's pred_original_sample, and output_for inverts it."""
    from diffusers import DDIMScheduler

    from nodes.lib.guidance import alpha_cumprod_at, log_sigmas, output_for, predicted_clean

    sched = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          prediction_type=prediction, clip_sample=False)
    sched.set_timesteps(10)
    table = log_sigmas(sched.config)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    out = torch.randn(2, 4, 8, 8, generator=gen)
    t = sched.timesteps[3]
    alpha = alpha_cumprod_at(table, t)
    x0 = predicted_clean(x, out, alpha, prediction)
    ref = sched.step(out, t, x).pred_original_sample
    assert (x0 - ref).abs().max() < 1e-5
    back = output_for(x, x0, alpha, prediction, out)
    assert (back - out).abs().max() < 1e-4


def test_losses():
    from nodes.lib.guidance import (
        BrightnessLoss,
        ColourLoss,
        ImageSimilarityLoss,
        parse_colour,
    )

    assert parse_colour("#0000FF") == (0.0, 0.0, 1.0)
    assert parse_colour("ff8000") == (1.0, 128 / 255, 0.0)
    for bad in ("blue", "#12345", "#GG0000"):
        with pytest.raises(ValueError, match="#RRGGBB"):
            parse_colour(bad)
    blue = torch.zeros(2, 3, 4, 4)
    blue[:, 2] = 1
    assert ColourLoss(BLUE).per_image(blue).tolist() == [0.0, 0.0]
    assert ColourLoss((1.0, 0.0, 0.0)).per_image(blue).tolist() == pytest.approx([2 / 3] * 2)
    half = torch.zeros(1, 3, 4, 4)
    half[:, 2, :2] = 1  # half blue, half black: mean colour (0, 0, 0.5)
    assert ColourLoss(BLUE).per_image(half).item() == pytest.approx(0.25 / 3)
    assert ColourLoss(BLUE, "pixels").per_image(half).item() == pytest.approx(0.5 / 3)
    grey = torch.full((1, 3, 4, 4), 0.5)
    assert BrightnessLoss(0.5).per_image(grey).item() == pytest.approx(0.0, abs=1e-7)
    assert BrightnessLoss(1.0).per_image(grey).item() == pytest.approx(0.25)
    ref = torch.rand(1, 3, 8, 8)
    same = torch.nn.functional.interpolate(ref, size=(4, 4), mode="bilinear",
                                           align_corners=False, antialias=True)
    assert ImageSimilarityLoss(ref).per_image(same).item() == pytest.approx(0.0, abs=1e-7)
    with pytest.raises(ValueError, match="reference batch"):
        ImageSimilarityLoss(torch.rand(2, 3, 4, 4)).per_image(torch.rand(3, 3, 4, 4))


class _FakeModel:
    family = "pixel"
    extra: dict = {}
    scheduler_config = {"num_train_timesteps": 1000, "beta_schedule": "linear"}

    def __init__(self, prediction):
        self.prediction_type = prediction


class _FakeDenoiser:
    guided = True
    in_channels = 3

    def __init__(self, prediction, out):
        self.model = _FakeModel(prediction)
        self.out = out

    def __call__(self, x, t, image_cond=None, step=None):
        return self.out


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_guided_step_moves_the_clean_image_by_scale_times_gradient(prediction):
    """'pixels' colour loss on a pixel model: ∇ per value of x̂0 is (image − colour) (the
    mean's 1/n undone, image = x̂0/2 + 1/2), so the guided prediction predicts exactly
    x̂0 − scale·(x̂0/2 + 1/2 − colour); a learned variance half is passed through."""
    from nodes.lib.guidance import (
        ColourLoss,
        LossGuidedDenoiser,
        alpha_cumprod_at,
        predicted_clean,
    )

    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, generator=gen)
    out = torch.randn(2, 3, 4, 4, generator=gen) * 0.3
    inner = _FakeDenoiser(prediction, out)
    guide = LossGuidedDenoiser(inner, ColourLoss(BLUE, "pixels"), 0.4)
    t = torch.tensor(600)
    alpha = alpha_cumprod_at(guide.log_sigmas, t)
    x0 = predicted_clean(x, out, alpha, prediction)
    target = torch.tensor(BLUE).view(1, 3, 1, 1)
    want = x0 - 0.4 * (x0 / 2 + 0.5 - target)
    got = predicted_clean(x, guide(x, t), alpha, prediction)
    assert (got - want).abs().max() < 1e-4
    assert torch.equal(LossGuidedDenoiser(inner, ColourLoss(BLUE), 0.0)(x, t), out)
    variance = torch.randn(2, 3, 4, 4, generator=gen)
    inner.out = torch.cat([out, variance], dim=1)
    both = guide(x, t)
    assert both.shape == (2, 6, 4, 4) and torch.equal(both[:, 3:], variance)
    assert (predicted_clean(x, both[:, :3], alpha, prediction) - want).abs().max() < 1e-4


# ---- every scheduler, on a tiny pixel model ------------------------------------------------


@pytest.fixture(scope="module")
def pixel_folder(tmp_path_factory):
    return build_pixel(tmp_path_factory.mktemp("lg_pixel"), quiet=True)


def plain_pixel(folder, scheduler):
    """A tiny pixel model as a v predictor (its small output keeps the images unsaturated)."""
    nodes = pixel_nodes(folder, scheduler, steps=4, batch=2)
    nodes["ckpt"]["prediction"] = "v_prediction"
    return nodes


def guided_pixel(folder, scheduler, scale, loss=None, **guide):
    nodes = plain_pixel(folder, scheduler)
    if loss is None:
        nodes["guide"] = {"type": "guidance.colour", "denoiser": link("cfg", "denoiser"),
                          "color": "#0000FF", "scale": scale, **guide}
    else:
        nodes["loss"] = loss
        nodes["guide"] = {"type": "guidance.loss_guidance", "denoiser": link("cfg", "denoiser"),
                          "loss": link("loss", "loss"), "scale": scale, **guide}
    nodes["sampler"]["denoiser"] = link("guide", "denoiser")
    return nodes


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_scale_0_exact_and_scale_moves_colour(sess, pixel_folder, tmp_path,
                                                              scheduler):
    plain = _run(sess, tmp_path / "plain", plain_pixel(pixel_folder, scheduler)
                 ).output("decode", "image")
    zero = _run(sess, tmp_path / "zero", guided_pixel(pixel_folder, scheduler, 0.0)
                ).output("decode", "image")
    assert torch.equal(zero, plain)
    guided = _run(sess, tmp_path / "guided", guided_pixel(pixel_folder, scheduler, 0.5,
                                                          end=1.0)).output("decode", "image")
    before, after = colour_distance(plain), colour_distance(guided)
    print(f"[loss guidance] {scheduler}: colour distance to blue {before:.4f} -> {after:.4f}, "
          f"blue share {blue_share(plain):.3f} -> {blue_share(guided):.3f}")
    assert (guided - plain).abs().max() > 1e-3
    assert after < 0.8 * before
    assert blue_share(guided) > blue_share(plain) + 0.02


def test_pixels_mode_pulls_every_pixel(sess, pixel_folder, tmp_path):
    plain = _run(sess, tmp_path / "plain", plain_pixel(pixel_folder, "dpmpp_2m")
                 ).output("decode", "image")
    loss = {"type": "guidance.colour_loss", "color": "#0000FF", "mode": "pixels"}
    guided = _run(sess, tmp_path / "guided", guided_pixel(pixel_folder, "dpmpp_2m", 0.5, loss,
                                                          end=1.0)).output("decode", "image")
    assert pixel_distance(guided) < 0.8 * pixel_distance(plain)


def test_interval_limits_the_guided_steps(sess, pixel_folder, tmp_path):
    """An interval that holds no step of the schedule is the unguided image, bit for bit;
    guiding more of the schedule moves further."""
    plain = _run(sess, tmp_path / "plain", plain_pixel(pixel_folder, "ddim")
                 ).output("decode", "image")
    # 4 DDIM steps at timesteps 751, 501, 251, 1: progress 0.249, 0.499, 0.749, 0.999
    none = _run(sess, tmp_path / "none", guided_pixel(pixel_folder, "ddim", 0.5, start=0.8,
                                                      end=0.9)).output("decode", "image")
    assert torch.equal(none, plain)
    some = _run(sess, tmp_path / "some", guided_pixel(pixel_folder, "ddim", 0.5, start=0.0,
                                                      end=0.5)).output("decode", "image")
    full = _run(sess, tmp_path / "full", guided_pixel(pixel_folder, "ddim", 0.5, start=0.0,
                                                      end=1.0)).output("decode", "image")
    assert colour_distance(full) < colour_distance(some) < colour_distance(plain)


def test_brightness_and_similarity_losses_guide(sess, pixel_folder, tmp_path):
    plain = _run(sess, tmp_path / "plain", plain_pixel(pixel_folder, "euler")
                 ).output("decode", "image")
    luma = torch.tensor([0.2126, 0.7152, 0.0722]).view(1, 3, 1, 1)

    def brightness(image):
        return float((image.clamp(0, 1) * luma).sum(1).mean())

    bright = _run(sess, tmp_path / "bright", guided_pixel(
        pixel_folder, "euler", 0.5, {"type": "guidance.brightness_loss", "target": 0.95},
        end=1.0)).output("decode", "image")
    assert brightness(bright) > brightness(plain) + 0.1
    # a reference: a 32x32 half-red, half-green image as a PNG, guided at 16x16
    from PIL import Image

    ref = torch.zeros(1, 3, 32, 32)
    ref[:, 0, :, :16] = 1
    ref[:, 1, :, 16:] = 1
    png = tmp_path / "ref.png"
    Image.fromarray((ref[0].permute(1, 2, 0).numpy() * 255).astype("uint8")).save(png)
    similar = _run(sess, tmp_path / "similar", guided_pixel(
        pixel_folder, "euler", 0.5, {"type": "guidance.image_similarity_loss",
                                     "image": link("load", "image")}, end=1.0)
        | {"load": {"type": "image.load", "image": str(png)}}).output("decode", "image")
    small = torch.nn.functional.interpolate(ref, size=(16, 16), mode="bilinear",
                                            antialias=True)
    assert float(((similar - small) ** 2).mean()) < 0.5 * float(((plain - small) ** 2).mean())


def test_guidance_errors_name_the_input(sess, pixel_folder, tmp_path):
    nodes = guided_pixel(pixel_folder, "ddim", 1.0, color="purple")
    assert _errors(sess, tmp_path / "a", nodes)["guide"].input == "color"
    nodes = guided_pixel(pixel_folder, "ddim", 1.0)
    nodes["vae_src"] = fx.checkpoint_node(fx.reg(), fx.build_sd(tmp_path / "sd"), "sd1")
    nodes["guide"]["vae"] = link("vae_src", "vae")
    err = _errors(sess, tmp_path / "b", nodes)["guide"]
    assert err.input == "vae" and "pixel" in err.message
    nodes = guided_pixel(pixel_folder, "ddim", 1.0, start=0.6, end=0.4)
    assert _errors(sess, tmp_path / "c", nodes)["guide"].input == "start"


# ---- a latent model: the loss through the VAE decoder ----------------------------------------


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return fx.build_sd(tmp_path_factory.mktemp("lg_sd"))


def guided_sd(folder, scheduler, scale, vae=True):
    nodes = fx.txt2img_nodes(folder, scheduler, steps=4, size=32)
    nodes["noise"]["batch"] = 2
    nodes["guide"] = {"type": "guidance.colour", "denoiser": link("cfg", "denoiser"),
                      "color": "#0000FF", "scale": scale, "end": 1.0}
    if vae:
        nodes["guide"]["vae"] = link("ckpt", "vae")
    nodes["sampler"]["denoiser"] = link("guide", "denoiser")
    return nodes


@pytest.mark.parametrize("scheduler", ["euler", "dpmpp_2m_karras"])
def test_latent_model_guided_through_the_vae(sess, sd_folder, tmp_path, scheduler):
    """The loss is read where the guidance reads it: on the VAE's unclamped decoding of the
    sampled latents. (The random tiny UNet's latents are far from a VAE's range and its
    decoder's group norms make it nearly blind to their scale, hence the large scale and the
    modest gain here; the built-in model's test below measures a real model.)"""
    from nodes.lib.guidance import ColourLoss

    def loss(result):
        vae = result.output("ckpt", "vae")
        with torch.no_grad():
            decoded = vae.vae.decode(result.output("sampler", "latent") / vae.scaling_factor,
                                     return_dict=False)[0]
        return float(ColourLoss(BLUE).per_image(decoded / 2 + 0.5).mean())

    outputs = ("decode", "sampler", "ckpt")
    nodes = fx.txt2img_nodes(sd_folder, scheduler, steps=4, size=32)
    nodes["noise"]["batch"] = 2
    plain = _run(sess, tmp_path / "plain", nodes, outputs)
    zero = _run(sess, tmp_path / "zero", guided_sd(sd_folder, scheduler, 0.0), outputs)
    assert torch.equal(zero.output("decode", "image"), plain.output("decode", "image"))
    guided = _run(sess, tmp_path / "guided", guided_sd(sd_folder, scheduler, 64.0), outputs)
    before, after = loss(plain), loss(guided)
    print(f"[loss guidance] sd {scheduler}: colour loss {before:.4f} -> {after:.4f}")
    assert after < 0.95 * before


def test_latent_model_needs_the_vae(sess, sd_folder, tmp_path):
    err = _errors(sess, tmp_path, guided_sd(sd_folder, "euler", 1.0, vae=False))["guide"]
    assert err.input == "vae" and "connect its VAE" in err.message


# ---- the built-in workflow's contract ---------------------------------------------------------

WORKFLOW = fx.ROOT / "resources" / "workflows" / "builtin" / "colour_guidance.json"
BUILTIN = fx.ROOT / "resources" / "models" / "loom-shapes"


def test_colour_guidance_workflow_contract():
    doc = json.loads(WORKFLOW.read_text())
    nodes = doc["nodes"]
    assert nodes["guide"]["type"] == "guidance.colour"
    assert {"scale", "color"} <= set(nodes["guide"]["inputs"])
    assert nodes["guide"]["inputs"]["color"] == "#0000FF"
    assert {"text"} <= set(nodes["prompt"]["inputs"])
    assert {"seed", "batch"} <= set(nodes["noise"]["inputs"])
    assert [n["type"] for n in nodes.values()].count("image.save") == 1
    assert nodes["sampler"]["inputs"]["denoiser"] == {"node": "guide", "output": "denoiser"}


@pytest.mark.skipif(not (BUILTIN / "model_index.json").is_file(), reason="no built-in model")
def test_colour_guidance_scale_0_is_the_default_workflow_and_default_scale_is_bluer(tmp_path):
    from engine.api import DEFAULT_WORKFLOW, Session

    s = Session()
    guided_graph = s.load(WORKFLOW)
    plain_graph = s.load(DEFAULT_WORKFLOW)
    settings = {"prompt.text": "a green triangle on a gray background", "noise.seed": 3,
                "noise.batch": 8}
    for graph in (guided_graph, plain_graph):
        for target, value in settings.items():
            s.set(graph, target, value)

    def image(graph):
        result = s.run(graph, outputs=["decode"], output_dir=tmp_path, device="cpu")
        assert result.ok, result.errors
        return result.output("decode", "image")

    plain = image(plain_graph)
    default_scale = json.loads(WORKFLOW.read_text())["nodes"]["guide"]["inputs"]["scale"]
    assert default_scale > 0
    guided = image(guided_graph)
    s.set(guided_graph, "guide.scale", 0.0)
    zero = image(guided_graph)
    assert torch.equal(zero, plain)
    print(f"[colour guidance] blue share {blue_share(plain):.3f} -> {blue_share(guided):.3f}")
    assert blue_share(guided) > blue_share(plain) + 0.02
