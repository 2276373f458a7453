"""The built-in model's training script, end to end at toy size: every stage runs, the export is
an SD-format folder that Load Checkpoint reads and the default workflow renders, and a stage
re-run with the same seed gives the same weights."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
torch = pytest.importorskip("torch")

from tools.builtin import evaluate, train  # noqa: E402


def _alphas(zero_snr: bool):
    from diffusers import DDPMScheduler
    return DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear",
                         rescale_betas_zero_snr=zero_snr).alphas_cumprod


def test_min_snr_weights_only_damp_the_nearly_clean_timesteps():
    t = torch.arange(0, 1000, 37)
    w = train.loss_weights(_alphas(False), t, 5.0, "epsilon")
    assert float(w[0]) < 0.01                       # t = 0: SNR in the thousands
    assert torch.all(w[t > 300] == 1.0)             # noisy steps keep their full weight
    assert torch.all(w[1:] >= w[:-1])               # never less weight for more noise
    assert torch.equal(train.loss_weights(_alphas(False), t, 0.0, "epsilon"),
                       torch.ones(len(t)))


def test_v_prediction_weights_are_finite_and_full_at_zero_terminal_snr():
    """The v phases train on the schedule rescaled to zero terminal SNR: the last timestep is
    pure noise (SNR 0), where epsilon weights would divide by zero; v weights stay 1 there."""
    alphas = _alphas(True)
    assert float(alphas[-1]) == 0.0
    t = torch.tensor([0, 100, 500, 900, 999])
    w = train.loss_weights(alphas, t, 5.0, "v_prediction")
    assert torch.isfinite(w).all() and float(w[-1]) == 1.0 and float(w[0]) < 0.01
    # the same weight on the clean image's error as min(SNR + 1, gamma)
    snr = alphas[t] / (1 - alphas[t])
    assert torch.allclose(w * (snr + 1), torch.clamp(snr + 1, max=5.0))


def test_decoder_loss_outline_is_the_band_around_a_shapes_edge():
    """The decoder stage weights the pixels within 2 px of a shape's edge, inside and outside:
    a drawn shape's coverage of a 6x6 square gives a band 2 px wide on either side of its edge,
    nothing in its middle or far from it, and soft values where the coverage is partial."""
    cover = torch.zeros(1, 1, 16, 16)
    cover[0, 0, 5:11, 5:11] = 1.0
    band = train.outline(cover)[0, 0]
    assert band.shape == (16, 16)
    assert torch.all(band[3:13, 3:13][cover[0, 0, 3:13, 3:13] == 0] == 1.0)   # 2 px outside
    assert torch.all(band[5:7, 5:11] == 1.0) and torch.all(band[9:11, 5:11] == 1.0)  # 2 inside
    assert float(band[7:9, 7:9].sum()) == 0.0                                  # the middle
    assert float(band[:2].sum()) == 0.0 and float(band[:, 14:].sum()) == 0.0  # far away
    cover[0, 0, 5, 12] = 0.25                                                 # anti-aliasing
    assert float(train.outline(cover)[0, 0, 5, 14]) == 0.25


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    args = ["--work", str(root / "work"), "--out", str(root / "model"),
            "--configs", str(root / "configs"), "--vae-steps", "3", "--vae-batch", "4",
            "--examples", "48", "--unet-steps", "3", "--unet-batch", "8",
            "--vpred-steps", "3", "--polish-steps", "2", "--decoder-steps", "2",
            "--colour-steps", "2"]
    assert train.main(args) == 0
    return root, args


def test_all_stages_write_an_sd_format_folder_that_renders(trained):
    root, _ = trained
    model = root / "model"
    index = json.loads((model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    for part in ("unet", "vae", "text_encoder"):
        assert (model / part / "diffusion_pytorch_model.safetensors").is_file() or \
            (model / part / "model.safetensors").is_file()
    assert (root / "configs" / "model_index.json").is_file()   # for single-file loading
    assert not (root / "model.tmp").exists() and not (root / "model.old").exists()
    vae = json.loads((model / "vae" / "config.json").read_text())
    latents = np.load(root / "work" / "latents.npz")
    assert latents["latents"].shape == (48, 4, 8, 8)
    assert vae["scaling_factor"] == pytest.approx(float(latents["scaling_factor"]), rel=1e-6)
    scheduler = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["prediction_type"] == "v_prediction" and scheduler["rescale_betas_zero_snr"]
    for stage in ("_eps", "_v", "", "_colour"):   # each UNet stage wrote its own weights
        assert (root / "work" / f"unet{stage}.safetensors").is_file()
    image = evaluate.Renderer(str(model), device="cpu").images("a red circle", seed=1)[0]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_a_stage_rerun_with_the_same_seed_gives_the_same_weights(trained):
    from safetensors.torch import load_file
    root, args = trained
    work = root / "work"
    first = load_file(str(work / "unet_v.safetensors"))
    assert train.main(args + ["--stage", "vpred"]) == 0
    again = load_file(str(work / "unet_v.safetensors"))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    changed = train.main(args + ["--stage", "vpred", "--seed", "99"])
    assert changed == 0
    other = load_file(str(work / "unet_v.safetensors"))
    assert any(not torch.equal(first[k], other[k]) for k in first)


def test_an_interrupted_stage_resumes_to_the_weights_of_an_uninterrupted_one(trained):
    """The colour stage saves its whole state every few steps (here every 2); stopped after
    step 4 of 6 and run again, it ends bit for bit where one uninterrupted run ends."""
    from safetensors.torch import load_file
    root, _ = trained
    work = root / "work"
    train.train_unet(work, 6, 8, 1234, phase="colour", save_every=2)
    whole = load_file(str(work / "unet_colour.safetensors"))
    whole_text = load_file(str(work / "text_colour.safetensors"))
    (work / "unet_colour.safetensors").unlink()
    train.train_unet(work, 6, 8, 1234, phase="colour", save_every=2, stop_after=4)
    assert (work / "resume_colour.pt").is_file() and not (work / "unet_colour.safetensors").exists()
    train.train_unet(work, 6, 8, 1234, phase="colour", save_every=2)
    assert not (work / "resume_colour.pt").exists()      # finished: the resume point is gone
    resumed = load_file(str(work / "unet_colour.safetensors"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    resumed_text = load_file(str(work / "text_colour.safetensors"))
    assert all(torch.equal(whole_text[k], resumed_text[k]) for k in whole_text)


def test_colour_targets_read_both_colours_from_the_caption():
    t = train.colour_targets(["a large purple star on a white background", "a black circle",
                              "a square on the left", ""])
    names = train.COLOUR_NAMES
    assert t[0].tolist() == [names.index("purple"), names.index("white")]
    assert t[1].tolist() == [names.index("black"), -100]
    assert t[2].tolist() == [-100, -100] and t[3].tolist() == [-100, -100]


def test_colour_probe_pools_only_the_captions_own_tokens():
    """The probe averages the encoder's outputs up to and including the end-of-text token; the
    padding after it (the same token repeated) does not count."""
    probe = train.ColourProbe(4)
    eos = 9
    ids = torch.tensor([[1, 2, eos, eos, eos], [1, eos, eos, eos, eos]])
    hidden = torch.zeros(2, 5, 4)
    hidden[0, :3] = 1.0
    hidden[0, 3:] = 100.0          # padding: must not move the pooled value
    hidden[1, :2] = 2.0
    with torch.no_grad():
        probe.heads.weight.copy_(torch.eye(20, 4))
        probe.heads.bias.zero_()
        out = probe(hidden, ids, eos)
    assert out.shape == (2, 2, 10)
    assert torch.allclose(out[0, 0, :4], torch.ones(4))
    assert torch.allclose(out[1, 0, :4], torch.full((4,), 2.0))


def test_latent_masks_mark_every_latent_pixel_a_shape_reaches():
    """The masks of --shape-weight: per latent pixel (an 8x8 patch of the image), the largest
    coverage inside it, so a one-pixel-wide arm marks its latent pixels fully."""
    covers = np.zeros((2, 64, 64), np.float32)
    covers[0, :, 10] = 1.0                 # a vertical line one pixel wide, in latent column 1
    covers[1, 40, 50] = 0.25               # one anti-aliased pixel, latent row 5, column 6
    m = train.latent_masks(covers, 8)
    assert m.shape == (2, 8, 8) and m.dtype == np.float16
    assert np.all(m[0, :, 1] == 1.0) and float(m[0].sum()) == 8.0
    assert float(m[1, 5, 6]) == 0.25 and float(m[1].sum()) == 0.25


def test_shape_weighted_loss_counts_the_shapes_latent_pixels_more():
    err = torch.zeros(2, 4, 8, 8)
    err[:, :, 0, 0] = 1.0                  # the error sits on one latent pixel
    masks = torch.zeros(2, 1, 8, 8)
    masks[0, 0, 0, 0] = 1.0                # example 0: that pixel is the shape's
    masks[1, 0, 7, 7] = 1.0                # example 1: the shape is elsewhere
    plain = train.per_example_loss(err, None, 0.0)
    assert torch.allclose(plain, torch.full((2,), 1 / 64))
    assert torch.equal(train.per_example_loss(err, masks, 0.0), plain)
    w = train.per_example_loss(err, masks, 4.0)
    assert float(w[0]) == pytest.approx(5 / 68)        # 5 of the weights' 68
    assert float(w[1]) == pytest.approx(1 / 68)        # less than plain: weight went elsewhere


def test_shape_weight_trains_from_the_latents_masks_and_resumes_only_with_its_value(trained):
    """--shape-weight changes what the colour stage learns; its resume point remembers the
    value, and a run with another value refuses to continue it instead of mixing the two."""
    from safetensors.torch import load_file
    root, _ = trained
    work = root / "work"
    masks = np.load(work / "latents.npz")["shape_masks"]
    assert masks.shape == (48, 8, 8) and np.all(masks.reshape(48, -1).max(1) > 0.5)
    train.train_unet(work, 4, 8, 1234, phase="colour", save_every=2)
    plain = load_file(str(work / "unet_colour.safetensors"))
    train.train_unet(work, 4, 8, 1234, phase="colour", save_every=2, stop_after=2,
                     shape_weight=4.0)
    with pytest.raises(ValueError, match="--shape-weight 4"):
        train.train_unet(work, 4, 8, 1234, phase="colour", save_every=2)
    train.train_unet(work, 4, 8, 1234, phase="colour", save_every=2, shape_weight=4.0)
    assert not (work / "resume_colour.pt").exists()
    weighted = load_file(str(work / "unet_colour.safetensors"))
    assert any(not torch.equal(plain[k], weighted[k]) for k in plain)
