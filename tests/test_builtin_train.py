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


def test_min_snr_weights_only_damp_the_nearly_clean_timesteps():
    from diffusers import DDPMScheduler
    alphas = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                           beta_schedule="scaled_linear").alphas_cumprod
    t = torch.arange(0, 1000, 37)
    w = train.min_snr_weights(alphas, t, 5.0)
    assert float(w[0]) < 0.01                       # t = 0: SNR in the thousands
    assert torch.all(w[t > 300] == 1.0)             # noisy steps keep their full weight
    assert torch.all(w[1:] >= w[:-1])               # never less weight for more noise
    assert torch.equal(train.min_snr_weights(alphas, t, 0.0), torch.ones(len(t)))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    args = ["--work", str(root / "work"), "--out", str(root / "model"),
            "--configs", str(root / "configs"), "--vae-steps", "3", "--vae-batch", "4",
            "--examples", "48", "--unet-steps", "3", "--unet-batch", "8",
            "--decoder-steps", "2"]
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
    image = evaluate.Renderer(str(model), device="cpu").images("a red circle", seed=1)[0]
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_a_stage_rerun_with_the_same_seed_gives_the_same_weights(trained):
    from safetensors.torch import load_file
    root, args = trained
    work = root / "work"
    first = load_file(str(work / "unet.safetensors"))
    assert train.main(args + ["--stage", "unet"]) == 0
    again = load_file(str(work / "unet.safetensors"))
    assert first.keys() == again.keys()
    assert all(torch.equal(first[k], again[k]) for k in first)
    changed = train.main(args + ["--stage", "unet", "--seed", "99"])
    assert changed == 0
    other = load_file(str(work / "unet.safetensors"))
    assert any(not torch.equal(first[k], other[k]) for k in first)
