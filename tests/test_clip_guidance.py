"""CLIP Guidance with a noise-aware CLIP (GLIDE): the Loom graph equals a CLIP-guided DDIM loop
written here with diffusers' scheduler and the pipeline's parts (ε̂ = ε − s·√(1−ᾱ_t)·∇_{x_t}
of exp(logit_scale)·cos(f(x_t, σ_t), g(prompt))), scale 0 is exactly the unguided graph and a
positive scale raises the CLIP score of the final sample on every scheduler, bad inputs are
refused by name, the training script runs, resumes bit-identically and exports, and the shipped
CLIP (resources/models/loom-clip) ranks the right caption first for most lightly noised
latents of the built-in model."""

from __future__ import annotations

import copy
import functools
import json
import os
import random
import shutil

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from nodes.lib.schedules import SCHEDULER_NAMES  # noqa: E402
from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import link, node_errors, run_nodes  # noqa: E402

one_torch_thread = fx.one_torch_thread
sess = fx.sess

SIZE = 32  # image pixels: tiny_vae is 8x down, so 4x4 latents
TEXT_WIDTH = 32  # fx.tiny_text_encoder's hidden size


_run, _errors = run_nodes, node_errors


def tiny_clip(text_width: int = TEXT_WIDTH, seed: int = 0):
    from nodes.lib.noisy_clip import NoisyClip
    from nodes.lib.noisy_models import EncoderConfig

    torch.manual_seed(seed)
    return NoisyClip(EncoderConfig(in_channels=4 + 2, block_out_channels=(8, 16),
                                   layers_per_block=1, out_dim=16, norm_num_groups=4),
                     text_width, text_head_hidden=32).eval()


def _save(net, folder, kind="latents", channels=4):
    from nodes.lib.noisy_models import Space, save_folder

    save_folder(net, folder, Space(kind, channels, SIZE // 8), dtype=torch.float32)
    return folder


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    """A tiny random noise-aware CLIP of 4-channel latents reading 32-wide text encodings,
    saved in fp32 (so the reference loop can use the very same weights)."""
    return _save(tiny_clip(), tmp_path_factory.mktemp("cg_clip") / "clip")


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    return fx.build_sd(tmp_path_factory.mktemp("cg_sd"))


def guided(nodes, clip_folder, scale, **guide):
    nodes = copy.deepcopy(nodes)
    nodes["clip"] = {"type": "loaders.noisy_model", "path": str(clip_folder)}
    nodes["guide"] = {"type": "guidance.clip", "denoiser": link("cfg", "denoiser"),
                      "clip": link("clip", "model"),
                      "prompt": fx.cond_link(nodes, "pos", fx.reg()), "scale": scale, **guide}
    nodes["sampler"] = dict(nodes["sampler"], denoiser=link("guide", "denoiser"))
    return nodes


def base(sd_folder, scheduler, steps=3, scale=1.0, batch=1):
    nodes = fx.txt2img_nodes(sd_folder, scheduler, steps=steps, scale=scale, size=SIZE)
    nodes["noise"]["batch"] = batch
    return nodes


@functools.cache
def prompt_encoding(folder, text=fx.PROMPT) -> torch.Tensor:
    """The text encoding a Text Encoder node makes of an unweighted prompt (diffusers')."""
    from transformers import CLIPTextModel, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(folder / "tokenizer")
    enc = CLIPTextModel.from_pretrained(folder / "text_encoder").eval()
    ids = tok(text, padding="max_length", max_length=tok.model_max_length, truncation=True,
              return_tensors="pt").input_ids
    with torch.no_grad():
        return enc(ids)[0]


def clip_score(clip_folder, x, log_sigma, hidden) -> torch.Tensor:
    """exp(logit_scale)·cos(f(x, σ), g(text)) per row, written out from the parts."""
    net = _clip(clip_folder)
    image = torch.nn.functional.normalize(net.encoder(torch.cat([x, coords(x)], 1), log_sigma),
                                          dim=-1)
    text = torch.nn.functional.normalize(net.text(hidden), dim=-1)
    return net.logit_scale.exp().clamp(max=100) * (image * text).sum(-1)


@functools.cache
def _clip(folder):
    from nodes.lib.noisy_models import load_weights, read_folder

    return load_weights(read_folder(folder))


def coords(x):
    b, _, h, w = x.shape
    ys = torch.linspace(-1, 1, h).view(1, 1, h, 1).expand(b, 1, h, w)
    xs = torch.linspace(-1, 1, w).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([ys, xs], 1)


# ---- (a) the graph equals a CLIP-guided DDIM loop --------------------------------------------


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_equal_to_a_clip_guided_ddim_loop(sess, clip_folder, sd_folder, tmp_path, cfg):
    """The conditional model alone (CFG 1, GLIDE's setting) and with CFG 3, plus CLIP guidance:
    the same numbers as ε̂ = ε − s·√(1−ᾱ_t)·∇_x score(x_t) fed to diffusers' DDIM scheduler
    (built as Loom builds it from the model's config), the VAE decoding the result."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils.torch_utils import randn_tensor

    from nodes.lib.noisy_clip import GUIDE_MAX_LOG_SIGMA

    steps, scale = 4, 40.0
    nodes = base(sd_folder, "ddim", steps=steps, scale=cfg)
    loom = _run(sess, tmp_path, guided(nodes, clip_folder, scale)).output("decode", "image")

    pipe = fx.use_scheduler(StableDiffusionPipeline.from_pretrained(sd_folder), "ddim")
    sched, unet, vae = pipe.scheduler, pipe.unet.eval(), pipe.vae.eval()
    sched.set_timesteps(steps)
    cond, uncond = prompt_encoding(sd_folder), prompt_encoding(sd_folder, "")
    x = randn_tensor((1, 4, SIZE // 8, SIZE // 8), generator=fx.generator())
    x = x * sched.init_noise_sigma
    for t in sched.timesteps:
        with torch.no_grad():
            if cfg == 1.0:
                eps = unet(x, t, encoder_hidden_states=cond).sample
            else:
                eu, ec = unet(torch.cat([x, x]), t,
                              encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
                eps = eu + cfg * (ec - eu)
        alpha = sched.alphas_cumprod[t]
        log_sigma = (0.5 * torch.log((1 - alpha) / alpha)).expand(x.shape[0])
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(clip_score(clip_folder, leaf, log_sigma, cond).sum(),
                                          leaf)
        if float(log_sigma[0]) > GUIDE_MAX_LOG_SIGMA:  # never on this schedule: ᾱ_999 ≈ 0.005
            grad = torch.zeros_like(grad)
        eps = eps - scale * torch.sqrt(1 - alpha) * grad
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    with torch.no_grad():
        ref = (vae.decode(x / vae.config.scaling_factor).sample / 2 + 0.5).clamp(0, 1)
    fx.assert_close(loom, ref, f"CLIP guidance (CFG {cfg})")
    plain = _run(sess, tmp_path / "plain", nodes).output("decode", "image")
    assert (plain - loom).abs().max() > 1e-2  # the guidance did something


# ---- (b) every scheduler: 0 is the unguided graph, > 0 raises the CLIP score -------------------


def final_score(clip_folder, sd_folder, latent) -> torch.Tensor:
    """The CLIP score of final samples with the prompt, read at the least noisy level of the
    model's schedule (timestep 0)."""
    from diffusers import DDPMScheduler

    from nodes.lib.noisy_models import log_sigma_of

    alpha0 = DDPMScheduler.from_pretrained(sd_folder / "scheduler").alphas_cumprod[0]
    with torch.no_grad():
        return clip_score(clip_folder, latent.float(), log_sigma_of(alpha0).expand(len(latent)),
                          prompt_encoding(sd_folder))


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_scale_0_exact_and_scale_raises_the_score(sess, clip_folder, sd_folder,
                                                                  tmp_path, scheduler):
    """One graph, three samplers sharing the noise and the prompt: unguided, CLIP guidance at
    scale 0 (bit-identical), and at scale 5 (a higher CLIP score for every image)."""
    nodes = guided(base(sd_folder, scheduler, steps=4, batch=2), clip_folder, 5.0)
    nodes["zero"] = dict(nodes["guide"], scale=0.0)
    for name, denoiser in (("plain", "cfg"), ("at_zero", "zero")):
        nodes[f"sampler_{name}"] = dict(nodes["sampler"], denoiser=link(denoiser, "denoiser"))
    out = _run(sess, tmp_path, nodes, outputs=("sampler", "sampler_plain", "sampler_at_zero"))
    plain = out.output("sampler_plain", "latent")
    assert torch.equal(out.output("sampler_at_zero", "latent"), plain)
    before = final_score(clip_folder, sd_folder, plain)
    after = final_score(clip_folder, sd_folder, out.output("sampler", "latent"))
    print(f"[clip guidance] {scheduler}: score {before.tolist()} -> {after.tolist()}")
    assert bool((after > before + 0.05).all())


def test_no_gradient_where_the_sample_is_noise(clip_folder):
    """Above the folder's guide_max_log_sigma the score is kept but gives no gradient (at a
    zero-terminal-SNR schedule's last steps the ε-form would multiply it by up to 4096)."""
    from nodes.lib.noisy_clip import GUIDE_MAX_LOG_SIGMA, ClipScore
    from nodes.lib.noisy_models import load_noisy_model

    hidden = torch.randn(1, 77, TEXT_WIDTH, generator=fx.generator(1))
    score = ClipScore(load_noisy_model(clip_folder), hidden)
    x = torch.randn(2, 4, 4, 4, generator=fx.generator()).requires_grad_(True)
    log_sigma = torch.tensor([GUIDE_MAX_LOG_SIGMA - 0.5, GUIDE_MAX_LOG_SIGMA + 0.5])
    values = score(x, log_sigma)
    (grad,) = torch.autograd.grad(values.sum(), x)
    assert float(grad[0].abs().sum()) > 0 and not bool(grad[1].any())
    expected = clip_score(clip_folder, x.detach(), log_sigma, hidden)
    assert torch.allclose(values.detach(), expected, atol=1e-6)


# ---- (c) errors that name the input ----------------------------------------------------------


def test_a_pixel_model_refuses_a_latent_clip(sess, clip_folder, tmp_path):
    from tests.test_pixel_models import build_pixel, pixel_nodes

    folder = build_pixel(tmp_path / "px", pipeline="ddim")
    nodes = pixel_nodes(folder, "ddim", steps=2, batch=1)
    nodes["clip"] = {"type": "loaders.noisy_model", "path": str(clip_folder)}
    nodes["guide"] = {"type": "guidance.clip", "denoiser": link("cfg", "denoiser"),
                      "clip": link("clip", "model"), "prompt": link("cond", "conditioning"),
                      "scale": 1.0}
    nodes["sampler"]["denoiser"] = link("guide", "denoiser")
    err = _errors(sess, tmp_path / "run", nodes)["guide"]
    assert err.input == "clip"
    assert "latents" in err.message and "pixels" in err.message


def test_a_text_encoding_of_another_width_is_refused(sess, sd_folder, tmp_path):
    wide = _save(tiny_clip(text_width=48), tmp_path / "wide")
    err = _errors(sess, tmp_path / "run", guided(base(sd_folder, "ddim", steps=2), wide,
                                                 1.0))["guide"]
    assert err.input == "prompt"
    assert "48" in err.message and "32" in err.message


def test_a_classifier_is_not_a_clip(sess, sd_folder, tmp_path):
    """A noise-aware classifier of the same latents, wired as the clip: refused by kind."""
    from nodes.lib.noisy_models import EncoderConfig, NoisyClassifier

    torch.manual_seed(0)
    net = NoisyClassifier(EncoderConfig(in_channels=4, block_out_channels=(8, 16),
                                        layers_per_block=1, out_dim=16, norm_num_groups=4),
                          ["a", "b"])
    folder = _save(net, tmp_path / "classifier")
    err = _errors(sess, tmp_path / "run", guided(base(sd_folder, "ddim", steps=2), folder,
                                                 1.0))["guide"]
    assert err.input == "clip"
    assert "noisy_classifier" in err.message


def test_clip_folder_round_trip_and_channel_check(clip_folder):
    from nodes.lib.noisy_models import load_weights, read_folder

    folder = read_folder(clip_folder)
    assert folder.config["kind"] == "noisy_clip"
    assert folder.config["text_hidden_size"] == TEXT_WIDTH and folder.config["coords"] is True
    net = load_weights(folder)
    with pytest.raises(ValueError, match="4-channel"):
        net.encode_image(torch.zeros(1, 3, 4, 4), torch.zeros(1))
    with pytest.raises(ValueError, match="width 32"):
        net.encode_text(torch.zeros(1, 77, 16))


# ---- (d) the training script -----------------------------------------------------------------


def test_train_clip_quick_runs_resumes_and_exports(sess, tmp_path):
    from safetensors.torch import load_file

    from tools.builtin import train_clip

    common = ["--quick", "--threads", "1"]
    whole, out = tmp_path / "whole", tmp_path / "whole" / "quick-clip"
    assert train_clip.main(common + ["--work", str(whole), "--out", str(out)]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "noisy_clip" and config["space"]["kind"] == "latents"
    assert config["space"]["channels"] == 4 and config["text_hidden_size"] == 64
    assert config["trained_with"]["name"] == "loom-shapes"
    assert set(config["evaluation"]) == {f"t {lo}-{hi - 1}" for lo, hi in train_clip.BANDS}
    # interrupted after 8 of 16 steps, then the same command: the uninterrupted weights
    part = tmp_path / "part"
    part.mkdir()
    shutil.copy(whole / "pool.npz", part / "pool.npz")
    args = common + ["--work", str(part), "--stage", "train"]
    assert train_clip.main(args + ["--stop-after", "8"]) == 0
    assert (part / "resume.pt").is_file() and not (part / "clip.safetensors").exists()
    assert train_clip.main(args) == 0
    a = load_file(str(whole / "clip.safetensors"))
    b = load_file(str(part / "clip.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the export loads through Loom's loader node
    result = _run(sess, tmp_path / "load", {"c": {"type": "loaders.noisy_model",
                                                  "path": str(out)}}, outputs=["c"])
    bundle = result.output("c", "model")
    assert bundle.kind == "noisy_clip" and bundle.space.size == 8


# ---- (e) the shipped CLIP ----------------------------------------------------------------------

SHIPPED = fx.ROOT / "resources" / "models" / "loom-clip"
MODEL = fx.ROOT / "resources" / "models" / "loom-shapes"
WORKFLOW = fx.ROOT / "resources" / "workflows" / "builtin" / "clip_guidance.json"


def test_shipped_clip_ranks_the_right_caption_first():
    """32 scenes the training never drew, encoded by the built-in VAE and lightly noised
    (timestep 50 of the built-in schedule, log σ ≈ −1.5): for most of them the CLIP ranks
    their own full caption first among the 32, and the right image first for most captions;
    a shuffled pairing does not."""
    from nodes.lib.noisy_models import load_weights, read_folder
    from tools.builtin import shapes, train_clip

    folder = read_folder(SHIPPED)
    assert folder.space.kind == "latents" and folder.space.channels == 4
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 3 * 1024 * 1024
    net = load_weights(folder)
    vae, text, tok, sched = train_clip.load_parts(MODEL)
    assert folder.config["text_hidden_size"] == text.config.hidden_size
    rng = random.Random(424242)
    scenes = [shapes.random_scene(rng) for _ in range(32)]
    x0 = train_clip.encode_scenes(vae, scenes)
    hidden = train_clip.encode_text(text, tok, [shapes.scene_caption(s).text() for s in scenes])
    acp = train_clip.alphas_cumprod(sched)
    gen = torch.Generator().manual_seed(0)
    xt, log_sigma = train_clip.noised(x0, torch.full((32,), 50), acp, gen)
    with torch.no_grad():
        sim = net.encode_image(xt, log_sigma) @ net.encode_text(hidden).T
    right = torch.arange(32)
    image_to_caption = float((sim.argmax(1) == right).float().mean())
    caption_to_image = float((sim.argmax(0) == right).float().mean())
    print(f"[loom-clip] t=50: image→caption {image_to_caption:.2f}, "
          f"caption→image {caption_to_image:.2f}")
    assert image_to_caption >= 0.8 and caption_to_image >= 0.8
    assert float(sim.diagonal().mean()) > float(sim.mean()) + 0.2


def test_clip_guidance_workflow_contract():
    doc = json.loads(WORKFLOW.read_text())
    nodes = doc["nodes"]
    assert nodes["guide"]["type"] == "guidance.clip"
    assert nodes["guide"]["inputs"]["clip"] == {"node": "clip", "output": "model"}
    assert nodes["guide"]["inputs"]["prompt"] == {"node": "prompt", "output": "conditioning"}
    assert nodes["clip"]["inputs"]["path"] == "resources/models/loom-clip"
    assert nodes["cfg"]["type"] == "sampling.cfg_combine"
    assert nodes["cfg"]["inputs"]["scale"] == 1.0
    assert nodes["sampler"]["inputs"]["denoiser"] == {"node": "guide", "output": "denoiser"}
    assert {"seed", "batch"} <= set(nodes["noise"]["inputs"])
    assert [n["type"] for n in nodes.values()].count("image.save") == 1
