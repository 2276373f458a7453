"""Trains Loom's built-in text-to-image model from scratch on the procedural shapes data set.

    python -m tools.builtin.train                 # everything: data, VAE, latents, UNet, export
    python -m tools.builtin.train --stage vpred   # one stage (the earlier ones' files must exist)

Stages and their files (under --work, default build/builtin/):
  vae     an AutoencoderKL (8× down, 4 latent channels) on freshly drawn images  → vae.safetensors
  decoder the VAE decoder fine-tuned, encoder frozen, lower learning rate → vae_tuned.safetensors
  latents draws the fixed training set and encodes it once                     → latents.npz
  unet    UNet2DConditionModel + CLIPTextModel trained together from scratch, epsilon
          prediction on Stable Diffusion's noise schedule, captions dropped for 15 % of
          examples (classifier-free guidance)                     → unet_eps.safetensors,
                                                                    text_eps.safetensors
  vpred   both fine-tuned to v-prediction on the schedule rescaled to zero terminal SNR, so
          the caption, not the seed's noise, decides where the shape goes → unet_v.safetensors,
                                                                            text_v.safetensors
  polish  the same objective, uniform timesteps, lower learning rate → unet.safetensors,
                                                                        text.safetensors
  colour  the same, noisiest timesteps weighted up, plus a loss that makes the text encoder
          name the caption's colours (ColourProbe): keeps "blue"/"purple", "red"/"black",
          "pink"/"white" apart                          → unet_colour.safetensors, ...
  export  the diffusers folder, fp16 safetensors                                → --out
          (default resources/models/loom-shapes), and its configs → resources/configs/loom_builtin
  single  (not part of "all") the exported model as one original-layout file      → --single
  finetune (not part of "all") import an exported model (--from-model, default the committed
          one), encode the latents with its VAE, run the colour stage, export

--shape-weight K (the colour stage; 0, the default, leaves it as it was) weights each latent
pixel's loss by 1 + K·(how much of the shape reaches into it), so the few latent pixels a small
or thin shape covers count as much as the background around it; --colour-probe 0 turns the
ColourProbe off. The shapes' masks on the latent grid come from the latents stage
(latents.npz "shape_masks"). The issue-23 fine-tune of the committed model (1 thread: 89
minutes with other jobs sharing the 2 cores; colour 90.6 -> 100 % held-in, 83.3 -> 100 %
held-out at the default guidance):
    python -m tools.builtin.train --stage finetune --work build/builtin-c23 \
        --out build/loom-shapes-c23 --configs build/loom-shapes-c23-configs \
        --colour-probe 0 --shape-weight 4 --colour-steps 6000 --threads 1

The UNet stages save a resume point every 250 steps (resume_<stage>.pt: weights, optimiser,
random stream); run the same command again after an interruption and it continues there.

Seeded and deterministic on the CPU for a given torch build and thread count (the committed
model: 2 threads). Time on a 2-core CPU for the defaults: about 85 minutes (the README has the
figures per stage); --quick trains a throwaway model in a few minutes (to check the pipeline end
to end, not to use).
"""
from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from tools.builtin import shapes

ROOT = Path(__file__).resolve().parents[2]
TOKENIZER_DIR = ROOT / "resources" / "tokenizers" / "clip"
CONFIGS_DIR = ROOT / "resources" / "configs" / "loom_builtin"

VAE_CONFIG = dict(
    in_channels=3, out_channels=3,
    down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
    block_out_channels=[16, 32, 64, 64], layers_per_block=1, latent_channels=4,
    norm_num_groups=8, sample_size=64, act_fn="silu",
)
TEXT_CONFIG = dict(
    vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=77, projection_dim=64,
    hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
UNET_CONFIG = dict(
    sample_size=8, in_channels=4, out_channels=4,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
    up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
    block_out_channels=[64, 128], layers_per_block=1, cross_attention_dim=64,
    attention_head_dim=8, norm_num_groups=32, use_linear_projection=True,
)
SCHEDULER_CONFIG = dict(
    _class_name="EulerDiscreteScheduler", num_train_timesteps=1000, beta_start=0.00085,
    beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
    rescale_betas_zero_snr=True, timestep_spacing="trailing", steps_offset=1, clip_sample=False,
    set_alpha_to_one=False,
)
CAPTION_DROP = 0.15


def log(msg: str) -> None:
    print(msg, flush=True)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def lr_at(step: int, total: int, peak: float, warmup: int, floor: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * t))


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def save_tensors(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_file
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(tmp))
    tmp.replace(path)


def load_tensors(module: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import load_file
    module.load_state_dict(load_file(str(path)))


def make_vae():
    from diffusers import AutoencoderKL
    return AutoencoderKL(**VAE_CONFIG)


def make_text():
    from transformers import CLIPTextConfig, CLIPTextModel
    return CLIPTextModel(CLIPTextConfig(**TEXT_CONFIG))


def make_unet():
    from diffusers import UNet2DConditionModel
    return UNet2DConditionModel(**UNET_CONFIG)


def make_tokenizer():
    from transformers import CLIPTokenizer
    return CLIPTokenizer(str(TOKENIZER_DIR / "vocab.json"), str(TOKENIZER_DIR / "merges.txt"))


# ------------------------------------------------------------------------------------ VAE

def train_vae(work: Path, steps: int, batch: int, seed: int) -> None:
    seed_all(seed)
    vae = make_vae().train()
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3, weight_decay=0.0)
    rng = random.Random(seed)
    t0, avg = time.time(), None
    log(f"[vae] {sum(p.numel() for p in vae.parameters()) / 1e6:.2f} M parameters, "
        f"{steps} steps of {batch}")
    for step in range(steps):
        imgs, covers = zip(*(shapes.render(shapes.random_scene(rng)) for _ in range(batch)))
        x = to_tensor(np.stack(imgs))
        cover = torch.from_numpy(np.stack(covers)).unsqueeze(1)
        # Shapes are ~5 % of the pixels, and what tells a small star from a small disc is a
        # thin band along its outline: weight both up so the decoder draws them sharply (the
        # unweighted squared error below keeps the flat background from drifting).
        weight = 1.0 + 8.0 * cover + 8.0 * outline(cover)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 1e-3, 200, 2e-5)
        post = vae.encode(x).latent_dist
        z = post.sample()
        z = z + 0.02 * torch.randn_like(z) * z.detach().std()   # the UNet's latents are not exact
        recon = vae.decode(z).sample
        err = recon - x
        loss = (weight * err.abs()).mean() / weight.mean() + 0.5 * (err ** 2).mean() \
            + 1e-6 * post.kl().mean()
        optimise(opt, loss, vae.parameters())
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"[vae] step {step + 1}/{steps} loss {avg:.4f} "
                f"{eta(t0, step + 1, steps - step - 1)}")
        if step % 1000 == 999:
            save_tensors(vae, work / "vae.safetensors")
    save_tensors(vae, work / "vae.safetensors")


def outline(cover: torch.Tensor, width: int = 2) -> torch.Tensor:
    """The band of pixels within `width` of a shape's edge (1 there, 0 elsewhere; soft at
    anti-aliased edges): where a star's points and a triangle's corners differ from a blob."""
    k = 2 * width + 1
    return F.max_pool2d(cover, k, 1, width) + F.max_pool2d(-cover, k, 1, width)


def train_decoder(work: Path, steps: int, batch: int, seed: int) -> None:
    """Fine-tunes the VAE decoder with the encoder frozen: the latent space (and so the UNet
    trained on it) stays valid while the decoder learns to draw edges and small shapes sharply.
    The loss weights the shapes' outlines as much as their insides: the latents do tell a
    small star from a small disc (a classifier on them gets 94 % of small shapes right), but
    a decoder trained on the area alone draws both as blobs. The VAE stage already weights the
    outlines; this stage, at a lower learning rate with the encoder fixed, is what sharpens small
    stars and triangles (autoencoder alone: 71 % of shapes right after the VAE stage, 85 % after
    1200 steps of this one)."""
    seed_all(seed + 7)
    vae = make_vae()
    load_tensors(vae, work / "vae.safetensors")
    vae.eval()
    for p in vae.parameters():
        p.requires_grad_(False)
    train_params = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters())
    for p in train_params:
        p.requires_grad_(True)
    vae.decoder.train()
    opt = torch.optim.AdamW(train_params, lr=4e-4, weight_decay=0.0)
    rng = random.Random(seed + 7)
    t0, avg = time.time(), None
    log(f"[decoder] {sum(p.numel() for p in train_params) / 1e6:.2f} M parameters, "
        f"{steps} steps of {batch}")
    for step in range(steps):
        imgs, covers = zip(*(shapes.render(shapes.random_scene(rng)) for _ in range(batch)))
        x = to_tensor(np.stack(imgs))
        cover = torch.from_numpy(np.stack(covers)).unsqueeze(1)
        weight = 1.0 + 8.0 * cover + 8.0 * outline(cover)
        with torch.no_grad():
            z = vae.encode(x).latent_dist.mean
            z = z + 0.02 * torch.randn_like(z) * z.std()   # the UNet's latents are not exact
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, 4e-4, 100, 1e-5)
        err = vae.decode(z).sample - x
        loss = (weight * err.abs()).mean() / weight.mean() + 0.5 * (err ** 2).mean()
        optimise(opt, loss, train_params)
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"[decoder] step {step + 1}/{steps} loss {avg:.4f} "
                f"{eta(t0, step + 1, steps - step - 1)}")
        if step % 1000 == 999 or step == steps - 1:
            save_tensors(vae, work / "vae_tuned.safetensors")


# -------------------------------------------------------------------------------- latents

def encode_latents(work: Path, n: int, seed: int) -> None:
    seed_all(seed)
    vae = make_vae().eval()
    trained = work / "vae.safetensors"
    load_tensors(vae, trained if trained.is_file() else work / "vae_tuned.safetensors")
    t0 = time.time()
    images, covers, captions = shapes.make_dataset(n, seed + 1)
    log(f"[latents] drew {n} images in {time.time() - t0:.0f} s")
    out = []
    with torch.no_grad():
        for i in range(0, n, 256):
            out.append(vae.encode(to_tensor(images[i:i + 256])).latent_dist.mean)
    lat = torch.cat(out)
    std = float(lat.std())
    log(f"[latents] encoded in {time.time() - t0:.0f} s; latent std {std:.4f}, "
        f"mean {float(lat.mean()):.4f}")
    # an imported model keeps the scaling its UNet was trained with
    imported = work / "imported.json"
    scaling = (json.loads(imported.read_text())["scaling_factor"] if imported.is_file()
               else 1.0 / std)
    np.savez(work / "latents.npz", latents=lat.numpy().astype(np.float32),
             captions=np.array(captions), scaling_factor=np.float32(scaling),
             shape_masks=latent_masks(covers, lat.shape[-1]))


def latent_masks(covers: np.ndarray, grid: int) -> np.ndarray:
    """[n, grid, grid] float16: for each latent pixel, the shape's largest coverage among the
    image pixels it stands for (1 where any of them lies fully inside the shape). The largest,
    not the mean: a star's arm fills a sliver of a latent pixel's 8x8 patch, and its colour
    depends on that latent pixel as much as a disc's does on the pixels it fills."""
    cover = torch.from_numpy(np.ascontiguousarray(covers, dtype=np.float32)).unsqueeze(1)
    return F.adaptive_max_pool2d(cover, grid)[:, 0].numpy().astype(np.float16)


# ----------------------------------------------------------------------------------- UNet

def tokenize(tokenizer, captions: list[str]) -> torch.Tensor:
    return tokenizer(captions, padding="max_length", max_length=77, truncation=True,
                     return_tensors="pt").input_ids


def loss_weights(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float,
                 prediction: str) -> torch.Tensor:
    """Per-example loss weights after min-SNR (Hang et al. 2023, "Efficient Diffusion Training
    via Min-SNR Weighting"): in terms of the clean image's error, weight min(SNR, gamma) for
    epsilon prediction and min(SNR + 1, gamma) for v-prediction, so the nearly clean timesteps,
    which only polish texture, stop dominating the gradient. Returned as weights on the loss of
    the predicted quantity itself. gamma <= 0 gives uniform weights."""
    if gamma <= 0:
        return torch.ones(t.shape)
    a = alphas_cumprod[t]
    snr = a / (1.0 - a)
    if prediction == "epsilon":
        return torch.clamp(snr, max=gamma) / snr
    return torch.clamp(gamma / (snr + 1.0), max=1.0)


def per_example_loss(err: torch.Tensor, masks: torch.Tensor | None,
                     shape_weight: float) -> torch.Tensor:
    """[b] mean of the squared errors `err` [b, c, h, w] per example; with `masks` [b, 1, h, w]
    (latent_masks) a weighted mean, 1 + shape_weight·mask per latent pixel, normalised by the
    weights' mean so the loss keeps its scale (and the learning rate its meaning)."""
    if masks is None:
        return err.mean(dim=(1, 2, 3))
    w = 1.0 + shape_weight * masks
    return (err * w).mean(dim=(1, 2, 3)) / w.mean(dim=(1, 2, 3))


class Phase(NamedTuple):
    """One UNet stage: what it predicts, whose weights it starts from and writes (file-name
    suffixes), its learning rate, whether half of each batch comes from the noisiest
    timesteps, and the weight of the text encoder's colour-naming loss (colour_loss_weight)."""
    prediction: str
    start_from: str | None
    writes: str
    peak_lr: float
    warmup: int
    noisy_half: bool
    colour_weight: float = 0.0


PHASES = {
    "eps": Phase("epsilon", None, "_eps", 1e-3, 300, False),
    "v": Phase("v_prediction", "_eps", "_v", 5e-4, 100, True),
    "polish": Phase("v_prediction", "_v", "", 2e-4, 50, False),
    "colour": Phase("v_prediction", "", "_colour", 2e-4, 100, True, 0.1),
}
COLOUR_NAMES = list(shapes.COLOURS)
EXPORT_ORDER = ("_colour", "")   # export takes the last UNet stage that has run


def colour_targets(captions: list[str]) -> torch.Tensor:
    """[n, 2] class indices of the shape's colour and the background's colour named in each
    caption (-100 where the caption leaves it out: ignored by the loss)."""
    out = torch.full((len(captions), 2), -100, dtype=torch.long)
    for i, text in enumerate(captions):
        cap = shapes.parse_caption(text)
        if cap.colour is not None:
            out[i, 0] = COLOUR_NAMES.index(cap.colour)
        if cap.background is not None:
            out[i, 1] = COLOUR_NAMES.index(cap.background)
    return out


class ColourProbe(torch.nn.Module):
    """Two linear read-outs of the text encoder's mean output over the caption's tokens: which
    colour the shape is, which the background is. Trained with the UNet, its loss pushes the
    encoder to keep the colour words apart: after the first 7000 steps the outputs for "blue"
    and "purple", "red" and "black", "pink" and "white" were the closest pairs of all
    (mean |difference| 0.09-0.14 against 0.2-0.4 for the rest), and those are the colours the
    model mixed up. Thrown away after training."""

    def __init__(self, width: int):
        super().__init__()
        self.heads = torch.nn.Linear(width, 2 * len(COLOUR_NAMES))

    def forward(self, hidden: torch.Tensor, ids: torch.Tensor, eos: int) -> torch.Tensor:
        upto = (torch.cumsum((ids == eos).long(), dim=1) - (ids == eos).long()) == 0
        pooled = (hidden * upto.unsqueeze(-1)).sum(1) / upto.sum(1, keepdim=True)
        return self.heads(pooled).view(-1, 2, len(COLOUR_NAMES))


def save_resume(path: Path, state: dict) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def optimise(opt: torch.optim.Optimizer, loss: torch.Tensor, params) -> None:
    """One optimiser step on `loss`: gradients cleared, back-propagated, clipped to norm 1."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def eta(t0: float, done: int, left: int) -> str:
    """"(time so far, ~time left)" for a progress line, from the pace of `done` steps."""
    el = time.time() - t0
    return f"({el / 60:.1f} min, ~{el / done * left / 60:.1f} min left)"


def resume_due(step: int, steps: int, every: int) -> bool:
    """Whether to write the resume point after `step` (never after the last one)."""
    return (step + 1) % every == 0 and step < steps - 1


def train_unet(work: Path, steps: int, batch: int, seed: int, snr_gamma: float = 5.0,
               phase: str = "eps", save_every: int = 250, stop_after: int | None = None,
               probe_weight: float | None = None, shape_weight: float = 0.0) -> None:
    """UNet + text encoder, in three phases (PHASES). "eps": from scratch, epsilon prediction
    on Stable Diffusion's own noise schedule, which learns colours, shapes and edges cheaply.
    "v": from those weights, v-prediction on the same schedule rescaled to zero terminal SNR
    (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps are Flawed"), half of
    each batch from the noisiest 30 % of timesteps. On SD's schedule the last timestep still
    holds 7 % of the image, so the first phase's model takes the layout from that faint image
    instead of the caption, and at sampling time the shape lands where the seed's noise puts
    it; with zero terminal SNR the caption is the only source of where the shape goes, and
    this phase is what makes "at the top left" work. "polish": the same objective with
    timesteps uniform again and a lower learning rate, to sharpen shapes and colours. "colour":
    v-prediction again with the noisiest timesteps (where a colour is decided) weighted up, and
    the ColourProbe loss on the text encoder. `shape_weight` K > 0 weights each latent pixel's
    loss by 1 + K·mask (latent_masks: where the shape is), normalised per example, so that the
    colour of a small or thin shape, a few latent pixels among 64, is not averaged away.

    Every `save_every` steps the whole state (weights, optimiser, random stream) goes to
    resume<suffix>.pt, and a run that finds that file continues from it: an interrupted stage
    ends with the weights an uninterrupted one would have. `stop_after` (tests) returns after
    that many steps as an interruption would."""
    prediction, init, suffix, peak, warmup, noisy_half, colour_weight = PHASES[phase]
    if probe_weight is not None:
        colour_weight = probe_weight
    from diffusers import DDPMScheduler
    seed_all(seed)
    data = np.load(work / "latents.npz")
    latents = torch.from_numpy(data["latents"]) * float(data["scaling_factor"])
    captions = [str(c) for c in data["captions"]]
    masks = None
    if shape_weight:
        if "shape_masks" not in data.files:
            raise ValueError(f"{work / 'latents.npz'} has no shape masks (written before "
                             "--shape-weight existed): run --stage latents again")
        masks = torch.from_numpy(data["shape_masks"].astype(np.float32)).unsqueeze(1)
    tokenizer = make_tokenizer()
    ids_all = tokenize(tokenizer, captions)
    empty_ids = tokenize(tokenizer, [""])[0]
    text, unet = make_text().train(), make_unet().train()
    if init is not None:
        load_tensors(unet, work / f"unet{init}.safetensors")
        load_tensors(text, work / f"text{init}.safetensors")
    probe = ColourProbe(TEXT_CONFIG["hidden_size"]) if colour_weight else None
    targets = colour_targets(captions) if colour_weight else None
    params = list(unet.parameters()) + list(text.parameters())
    if probe is not None:
        params += list(probe.parameters())
    log(f"[unet {phase}] UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M, text "
        f"{sum(p.numel() for p in text.parameters()) / 1e6:.2f} M parameters; "
        f"{len(captions)} examples, {steps} steps of {batch}, {prediction}, "
        f"min-SNR gamma {snr_gamma}, shape weight {shape_weight}")
    opt = torch.optim.AdamW(params, lr=peak, weight_decay=1e-2)
    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                          beta_schedule="scaled_linear", prediction_type=prediction,
                          rescale_betas_zero_snr=prediction == "v_prediction")
    gen = torch.Generator().manual_seed(seed)
    t0, avg, first = time.time(), None, 0
    resume = work / f"resume{suffix}.pt"
    if resume.is_file():   # continue an interrupted run exactly where its last save left it
        state = torch.load(resume, weights_only=True)
        unet.load_state_dict(state["unet"])
        text.load_state_dict(state["text"])
        if probe is not None:
            probe.load_state_dict(state["probe"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        first, avg = int(state["step"]), float(state["avg"])
        if float(state.get("shape_weight", 0.0)) != shape_weight:
            raise ValueError(f"{resume} was written with --shape-weight "
                             f"{float(state.get('shape_weight', 0.0)):g}, not {shape_weight:g}: "
                             "run with that value, or delete the file to start the stage over")
        log(f"[unet {phase}] resuming at step {first + 1}/{steps}")
    n = latents.shape[0]
    for step in range(first, steps):
        idx = torch.randint(0, n, (batch,), generator=gen)
        x0 = latents[idx]
        ids = ids_all[idx].clone()
        drop = torch.rand(batch, generator=gen) < CAPTION_DROP
        ids[drop] = empty_ids
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        if noisy_half:
            noisy = torch.randint(700, sched.config.num_train_timesteps, (batch,), generator=gen)
            t = torch.where(torch.rand(batch, generator=gen) < 0.5, noisy, t)
        xt = sched.add_noise(x0, noise, t)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, peak, warmup, 1e-5)
        cond = text(ids).last_hidden_state
        pred = unet(xt, t, encoder_hidden_states=cond).sample
        target = noise if prediction == "epsilon" else sched.get_velocity(x0, noise, t)
        per_example = per_example_loss(F.mse_loss(pred, target, reduction="none"),
                                       None if masks is None else masks[idx], shape_weight)
        loss = (per_example * loss_weights(sched.alphas_cumprod, t, snr_gamma, prediction)).mean()
        if probe is not None:
            want = targets[idx].clone()
            want[drop] = -100
            logits = probe(cond, ids, TEXT_CONFIG["eos_token_id"])
            loss = loss + colour_weight * F.cross_entropy(
                logits.reshape(-1, len(COLOUR_NAMES)), want.reshape(-1), ignore_index=-100)
        optimise(opt, loss, params)
        avg = loss.item() if avg is None else 0.99 * avg + 0.01 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"[unet {phase}] step {step + 1}/{steps} loss {avg:.4f} "
                f"{eta(t0, step + 1, steps - step - 1)}")
        if resume_due(step, steps, save_every):
            save_resume(resume, {
                "unet": unet.state_dict(), "text": text.state_dict(), "opt": opt.state_dict(),
                "probe": probe.state_dict() if probe is not None else {},
                "gen": gen.get_state(), "step": step + 1, "avg": avg,
                "shape_weight": shape_weight})
        if stop_after is not None and step + 1 >= stop_after:
            return
    save_tensors(unet, work / f"unet{suffix}.safetensors")
    save_tensors(text, work / f"text{suffix}.safetensors")
    resume.unlink(missing_ok=True)


# --------------------------------------------------------------------------------- import

def _imported_from(work: Path) -> str | None:
    f = work / "imported.json"
    return json.loads(f.read_text())["from"] if f.is_file() else None


def import_model(work: Path, model: Path) -> None:
    """Starts the work folder from an exported model (the committed one, to fine-tune it): its
    VAE, UNet and text encoder in fp32 as the files the later stages read, and its latent
    scaling factor, which the latents stage then keeps."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    f32 = torch.float32
    save_tensors(AutoencoderKL.from_pretrained(model / "vae", torch_dtype=f32),
                 work / "vae_tuned.safetensors")
    (work / "vae.safetensors").unlink(missing_ok=True)
    save_tensors(UNet2DConditionModel.from_pretrained(model / "unet", torch_dtype=f32),
                 work / "unet.safetensors")
    save_tensors(CLIPTextModel.from_pretrained(model / "text_encoder", torch_dtype=f32),
                 work / "text.safetensors")
    vae_config = json.loads((model / "vae" / "config.json").read_text())
    (work / "imported.json").write_text(json.dumps(
        {"from": str(model), "scaling_factor": vae_config["scaling_factor"]}))
    log(f"[import] {model} -> {work}")


# --------------------------------------------------------------------------------- export

def export(work: Path, out: Path, configs: Path | None = None) -> None:
    """Writes the diffusers folder (fp16 safetensors) atomically: a temp folder, then a swap;
    then its JSON files to `configs` (default resources/configs/loom_builtin)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel
    data = np.load(work / "latents.npz")
    scaling = float(data["scaling_factor"])
    vae, text, unet = make_vae(), make_text(), make_unet()
    tuned = work / "vae_tuned.safetensors"
    load_tensors(vae, tuned if tuned.is_file() else work / "vae.safetensors")
    last = next(sfx for sfx in EXPORT_ORDER if (work / f"unet{sfx}.safetensors").is_file())
    load_tensors(text, work / f"text{last}.safetensors")
    load_tensors(unet, work / f"unet{last}.safetensors")
    vae.register_to_config(scaling_factor=scaling)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, model in (("vae", vae), ("text_encoder", text), ("unet", unet)):
        model.to(torch.float16).save_pretrained(tmp / name, safe_serialization=True)
    tok = tmp / "tokenizer"
    tok.mkdir()
    for f in ("vocab.json", "merges.txt"):
        shutil.copy(TOKENIZER_DIR / f, tok / f)
    (tok / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
        "do_lower_case": True}, indent=2))
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SCHEDULER_CONFIG, indent=2))
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.42.1",
        "_loom_family": "loom_builtin",
        "_loom_about": "Loom's built-in 64x64 shapes model, trained by tools/builtin/train.py",
        "feature_extractor": [None, None], "safety_checker": [None, None],
        "requires_safety_checker": False,
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    # unused for loading, kept for sanity: the models round-trip through diffusers' loaders
    AutoencoderKL.from_pretrained(tmp / "vae")
    UNet2DConditionModel.from_pretrained(tmp / "unet")
    CLIPTextModel.from_pretrained(tmp / "text_encoder")
    swap_folder(tmp, out)
    write_configs(out, configs or CONFIGS_DIR)


def swap_folder(tmp: Path, out: Path) -> None:
    """Puts the finished folder `tmp` where `out` is, replacing it: the old one is moved
    aside first and removed last, so `out` is never half-written."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        out.replace(old)
        tmp.replace(out)
        shutil.rmtree(old)
    else:
        tmp.replace(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    log(f"[export] wrote {out} ({size / 1e6:.1f} MB)")


def write_configs(model: Path, configs: Path) -> None:
    """The model's JSON files without weights, under resources/configs/loom_builtin: what the
    loader needs to read the model from a single original-layout .safetensors file."""
    tmp = configs.with_name(configs.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for f in model.rglob("*.json"):
        if f.parent.name == "tokenizer" and f.name == "vocab.json":
            continue
        dst = tmp / f.relative_to(model)
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    shutil.rmtree(configs, ignore_errors=True)
    tmp.replace(configs)


def export_single(model: Path, out: Path) -> None:
    """The built-in model as one original-layout (CompVis) .safetensors file, fp16, marked
    with the metadata `loom_family` so the loader knows which configs to use."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    from tools.original_layout import pipeline_to_original
    parts = SimpleNamespace(
        unet=UNet2DConditionModel.from_pretrained(model / "unet"),
        vae=AutoencoderKL.from_pretrained(model / "vae"),
        text_encoder=CLIPTextModel.from_pretrained(model / "text_encoder"))
    sd = {k: v.to(torch.float16).contiguous() for k, v in pipeline_to_original(parts).items()}
    tmp = out.with_name(out.name + ".tmp")
    pred = json.loads((model / "scheduler" / "scheduler_config.json").read_text()).get(
        "prediction_type", "epsilon")
    save_file(sd, str(tmp), metadata={"loom_family": "loom_builtin",
                                      "modelspec.prediction_type": pred})
    tmp.replace(out)
    log(f"[single] wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", default="all",
                   choices=["all", "vae", "latents", "unet", "vpred", "polish", "colour",
                            "decoder", "export", "single", "finetune", "import"])
    p.add_argument("--from-model", type=Path, default=ROOT / "resources" / "models" / "loom-shapes",
                   help="--stage finetune/import: the exported model to start from")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "builtin")
    p.add_argument("--out", type=Path, default=ROOT / "resources" / "models" / "loom-shapes")
    p.add_argument("--configs", type=Path, default=CONFIGS_DIR,
                   help="--stage export: where the model's JSON files (for single-file loading) go")
    p.add_argument("--single", type=Path, default=ROOT / "build" / "loom-shapes.safetensors",
                   help="--stage single: where to write the one-file checkpoint")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--vae-steps", type=int, default=3000)
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--decoder-steps", type=int, default=1200)
    p.add_argument("--examples", type=int, default=60000)
    p.add_argument("--unet-steps", type=int, default=3500)
    p.add_argument("--vpred-steps", type=int, default=2600)
    p.add_argument("--polish-steps", type=int, default=900)
    p.add_argument("--colour-steps", type=int, default=2400)
    p.add_argument("--colour-probe", type=float, default=PHASES["colour"].colour_weight,
                   help="weight of the colour stage's ColourProbe loss (0: none)")
    p.add_argument("--shape-weight", type=float, default=0.0,
                   help="colour stage: loss weight 1 + K x the shape's mask per latent pixel")
    p.add_argument("--unet-batch", type=int, default=64)
    p.add_argument("--snr-gamma", type=float, default=5.0,
                   help="min-SNR loss weighting for the UNet (0: uniform)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--quick", action="store_true", help="a few minutes, for checking the script")
    a = p.parse_args(argv)
    if a.quick:
        a.vae_steps, a.examples, a.unet_steps, a.decoder_steps = 60, 2000, 60, 30
        a.vpred_steps, a.polish_steps, a.colour_steps = 30, 30, 30
    if a.threads:
        torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    everything = ["vae", "decoder", "latents", "unet", "vpred", "polish", "colour", "export"]
    stages = {"all": everything, "finetune": ["import", "latents", "colour", "export"]}.get(
        a.stage, [a.stage])
    if a.stage == "finetune" and _imported_from(a.work) == str(a.from_model) \
            and (a.work / "latents.npz").is_file():
        stages = ["colour", "export"]   # an interrupted fine-tune: continue it
    if a.stage in ("all", "vae"):
        (a.work / "imported.json").unlink(missing_ok=True)
    # tiny weights/gradients otherwise slow the CPU math down; the flag is process-wide, so it
    # is switched back off for whoever called main() (tests, hypothesis need subnormals)
    torch.set_flush_denormal(True)
    try:
        for stage in stages:
            if stage == "vae":
                train_vae(a.work, a.vae_steps, a.vae_batch, a.seed)
            elif stage == "latents":
                encode_latents(a.work, a.examples, a.seed)
            elif stage == "unet":
                train_unet(a.work, a.unet_steps, a.unet_batch, a.seed, a.snr_gamma, "eps")
            elif stage == "vpred":
                train_unet(a.work, a.vpred_steps, a.unet_batch, a.seed, a.snr_gamma, "v")
            elif stage == "polish":
                train_unet(a.work, a.polish_steps, a.unet_batch, a.seed, a.snr_gamma, "polish")
            elif stage == "colour":
                train_unet(a.work, a.colour_steps, a.unet_batch, a.seed, a.snr_gamma, "colour",
                           probe_weight=a.colour_probe, shape_weight=a.shape_weight)
            elif stage == "import":
                import_model(a.work, a.from_model)
            elif stage == "decoder":
                train_decoder(a.work, a.decoder_steps, a.vae_batch, a.seed)
            elif stage == "single":
                export_single(a.out, a.single)
            else:
                export(a.work, a.out, a.configs)
    finally:
        torch.set_flush_denormal(False)
    log(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
