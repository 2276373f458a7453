"""Trains GLIDE's noised CLIP at toy scale for the built-in text model: a NoisyClip
(nodes.lib.noisy_clip) that reads loom-shapes' *noisy latents* and the prompt's encoding by
loom-shapes' own text encoder, trained with CLIP's contrastive loss, for CLIP Guidance.

    python -m tools.builtin.train_clip                # writes resources/models/loom-clip
    python -m tools.builtin.train_clip --quick        # a throwaway model in under a minute
    python -m tools.builtin.train_clip --stage eval   # retrieval per noise band of --out

Stages (files under --work, default build/clip/):
  pool   draws --pool scenes of the shapes data set (tools.builtin.shapes, as train.py draws
         them) and encodes them once with the model's VAE (the latent distribution's mean times
         the VAE's scaling factor: what the UNet denoises), plus a held-back evaluation set
         → pool.npz
  train  each step takes a batch of pooled scenes, draws a caption for each (half the full
         caption, half one drawn as train.py draws them: random_caption leaves attributes
         out), noises the latents at uniform timesteps of the model's schedule, and lowers
         CLIP's symmetric cross-entropy; a caption that leaves attributes out also fits other
         scenes in the batch, so the targets spread over every scene it fits (a multi-positive
         loss, not a false negative per collision)  → clip.safetensors
  export the folder (config.json + fp16 model.safetensors)                → --out
  eval   caption→image and image→caption top-1 among 64, per noise band, of --out

Noise levels. The model's schedule is rescaled to zero terminal SNR: at the last timestep ᾱ is
0 and x_t is pure noise; log σ is computed from ᾱ clamped at 2^-24 (as the σ samplers do).
Training includes that timestep (uniform over all 1000: the tower learns that pure noise holds
no caption, and retrieval can be reported in every band). It does not make the tower's
gradient vanish there, though, and guidance multiplies the gradient into x̂0 by (1−ᾱ)/√ᾱ
(4096 at the last step): CLIP Guidance takes no gradient above log σ 4, where no caption can
be read (nodes.lib.noisy_clip.GUIDE_MAX_LOG_SIGMA, recorded in config.json).

Seeded and deterministic for a thread count: every step's randomness comes from (seed, step),
so a run interrupted and continued from resume.pt (written every --save-every steps: weights,
optimiser, step) ends with the weights of an uninterrupted one; run the same command again.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch

from tools.builtin import shapes
from tools.builtin.train import (
    eta,
    log,
    lr_at,
    optimise,
    resume_due,
    save_resume,
    to_tensor,
    tokenize,
)

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "resources" / "models" / "loom-shapes"
OUT = ROOT / "resources" / "models" / "loom-clip"
WORK = ROOT / "build" / "clip"
EMBED_DIM = 64
ENCODER = dict(block_out_channels=(64, 128), layers_per_block=2, out_dim=EMBED_DIM,
               norm_num_groups=8)
FULL_CAPTIONS = 0.5
BANDS = ((0, 200), (200, 400), (400, 600), (600, 800), (800, 900), (900, 1000))
"""Timestep bands of the retrieval report (log σ at their edges, loom-shapes' schedule:
t 0 → −3.5, 200 → −0.5, 400 → 0.2, 600 → 1.0, 800 → 2.0, 900 → 2.9, 999 → 8.3)."""
ATTRS = ("colour", "shape", "size", "position", "background")
_CHOICES = {"colour": list(shapes.COLOURS), "shape": list(shapes.SHAPES),
            "size": list(shapes.SIZES), "position": list(shapes.POSITIONS),
            "background": list(shapes.COLOURS)}


# ------------------------------------------------------------------------------ the model files

def load_parts(model: Path):
    """(VAE, text encoder, tokenizer, scheduler config) of a diffusers text-to-image folder,
    fp32, frozen."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    vae = AutoencoderKL.from_pretrained(model / "vae", torch_dtype=torch.float32).eval()
    text = CLIPTextModel.from_pretrained(model / "text_encoder",
                                         torch_dtype=torch.float32).eval()
    tok = CLIPTokenizer(str(model / "tokenizer" / "vocab.json"),
                        str(model / "tokenizer" / "merges.txt"))
    sched = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    vae.requires_grad_(False)
    text.requires_grad_(False)
    return vae, text, tok, sched


def alphas_cumprod(scheduler_config: dict) -> torch.Tensor:
    from diffusers import DDPMScheduler

    cfg = {k: v for k, v in scheduler_config.items() if not k.startswith("_")}
    return DDPMScheduler.from_config(cfg).alphas_cumprod.double()


def model_identity(model: Path) -> dict:
    """Which model the CLIP was trained with: its folder name and the fingerprints (size and
    hash) of the text encoder and VAE weights, whose outputs it reads."""
    import hashlib

    out = {"name": model.name}
    for part, fname in (("text_encoder", "model.safetensors"),
                        ("vae", "diffusion_pytorch_model.safetensors")):
        data = (model / part / fname).read_bytes()
        out[f"{part}_sha256"] = hashlib.sha256(data).hexdigest()[:16]
    return out


# --------------------------------------------------------------------------------------- pool

def scene_codes(scenes: list[shapes.Scene]) -> np.ndarray:
    """[n, 5] indices of each scene's colour, shape, size, position, background."""
    return np.array([[_CHOICES[a].index(getattr(s, a)) for a in ATTRS] for s in scenes],
                    dtype=np.int64)


def scene_of(code) -> shapes.Scene:
    vals = {a: _CHOICES[a][int(c)] for a, c in zip(ATTRS, code)}
    return shapes.Scene(vals["colour"], vals["shape"], vals["size"], vals["position"],
                        vals["background"])


def encode_scenes(vae, scenes: list[shapes.Scene], chunk: int = 256) -> torch.Tensor:
    """The scaled latents (what the UNet denoises) of the scenes, drawn exactly."""
    scaling = float(vae.config.scaling_factor)
    out = []
    with torch.no_grad():
        for i in range(0, len(scenes), chunk):
            images = np.stack([shapes.render(s)[0] for s in scenes[i:i + chunk]])
            out.append(vae.encode(to_tensor(images)).latent_dist.mean * scaling)
    return torch.cat(out)


def make_pool(work: Path, model: Path, n: int, n_eval: int, seed: int) -> None:
    path = work / "pool.npz"
    meta = {"n": n, "n_eval": n_eval, "seed": seed, "model": model_identity(model)}
    if path.is_file():
        with np.load(path) as old:
            if json.loads(str(old["meta"])) == meta:
                log(f"[pool] {path} is up to date")
                return
    vae = load_parts(model)[0]
    t0 = time.time()
    rng = random.Random(seed + 1)
    train = [shapes.random_scene(rng) for _ in range(n)]
    held = [shapes.random_scene(rng) for _ in range(n_eval)]
    lat = encode_scenes(vae, train + held)
    log(f"[pool] drew and encoded {n} + {n_eval} scenes in {time.time() - t0:.0f} s; latent "
        f"std {float(lat.std()):.3f}")
    tmp = path.with_name("pool.tmp.npz")
    np.savez(tmp, latents=lat[:n].numpy(), codes=scene_codes(train),
             eval_latents=lat[n:].numpy(), eval_codes=scene_codes(held),
             meta=np.array(json.dumps(meta)))
    tmp.replace(path)


# -------------------------------------------------------------------------------------- train

def caption_codes(captions: list[shapes.Caption]) -> np.ndarray:
    """[n, 5] indices of what each caption names (-1 where it leaves the attribute out)."""
    return np.array([[-1 if getattr(c, a) is None else _CHOICES[a].index(getattr(c, a))
                      for a in ATTRS] for c in captions], dtype=np.int64)


def fit_matrix(captions: list[shapes.Caption], codes: np.ndarray) -> torch.Tensor:
    """[n_images, n_captions] 1 where the image's scene (codes [n_images, 5]) shows everything
    the caption names."""
    want = caption_codes(captions)[None]                   # [1, n_captions, 5]
    have = np.asarray(codes)[:, None]                      # [n_images, 1, 5]
    return torch.from_numpy(((want < 0) | (want == have)).all(-1).astype(np.float32))


def multi_positive_loss(logits: torch.Tensor, fit: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy with each row's target spread evenly over every
    caption (column) that fits it; with exactly one fit per row and column it is CLIP's."""
    li = -(torch.log_softmax(logits, dim=1) * fit / fit.sum(1, keepdim=True)).sum(1).mean()
    lt = -(torch.log_softmax(logits, dim=0) * fit / fit.sum(0, keepdim=True)).sum(0).mean()
    return 0.5 * (li + lt)


def encode_text(text_model, tokenizer, captions: list[str]) -> torch.Tensor:
    """What a Text Encoder node makes of an unweighted prompt: the last hidden state of
    77 tokens (nodes.lib.prompts), [B, 77, width]."""
    with torch.no_grad():
        return text_model(tokenize(tokenizer, captions)).last_hidden_state


class TextCache:
    """Text encodings by caption, each computed alone (batch of one) the first time it is
    asked for: the grammar has ~15k captions, so after the first few hundred steps the text
    encoder no longer runs, and a value never depends on which batch first asked for it (a
    resumed run sees the same numbers)."""

    def __init__(self, text_model, tokenizer):
        self.text_model, self.tokenizer = text_model, tokenizer
        self.known: dict[str, torch.Tensor] = {}

    def __call__(self, captions: list[str]) -> torch.Tensor:
        for c in captions:
            if c not in self.known:
                self.known[c] = encode_text(self.text_model, self.tokenizer, [c])[0]
        return torch.stack([self.known[c] for c in captions])


def noised(x0: torch.Tensor, t: torch.Tensor, acp: torch.Tensor,
           gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, log σ) at timesteps t: x_t = √ᾱ·x0 + √(1−ᾱ)·ε."""
    from nodes.lib.noisy_models import log_sigma_of

    a = acp[t].float().view(-1, 1, 1, 1)
    noise = torch.randn(x0.shape, generator=gen)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise, log_sigma_of(acp[t])


def new_model(text_width: int):
    """A NoisyClip with its initial weights from torch seed 0 (the data and noise stream
    follow --seed)."""
    from nodes.lib.noisy_clip import NoisyClip
    from nodes.lib.noisy_models import EncoderConfig

    torch.manual_seed(0)
    return NoisyClip(EncoderConfig(in_channels=4 + 2, **ENCODER), text_width)


def train(work: Path, model: Path, steps: int, batch: int, seed: int, lr: float,
          save_every: int = 250, stop_after: int | None = None) -> None:
    """AdamW, warm-up then cosine decay, gradients clipped at 1; every step's randomness from
    (seed, step). Writes work/clip.safetensors at the end, resume.pt on the way."""
    from tools.builtin.train import save_tensors

    data = np.load(work / "pool.npz")
    latents, codes = torch.from_numpy(data["latents"]), data["codes"]
    _, text_model, tok, sched = load_parts(model)
    acp = alphas_cumprod(sched)
    texts = TextCache(text_model, tok)
    clip = new_model(text_model.config.hidden_size).train()
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=1e-2)
    first, avg = 0, None
    resume = work / "resume.pt"
    if resume.is_file():
        state = torch.load(resume, weights_only=True)
        clip.load_state_dict(state["clip"])
        opt.load_state_dict(state["opt"])
        first, avg = int(state["step"]), float(state["avg"])
        log(f"[clip] resuming at step {first + 1}/{steps}")
    log(f"[clip] {sum(p.numel() for p in clip.parameters()) / 1e6:.2f} M parameters, "
        f"{steps} steps of {batch}, {len(codes)} pooled scenes")
    t0 = time.time()
    for step in range(first, steps):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        rng = random.Random(seed * 1_000_003 + step)
        idx = torch.randint(0, len(codes), (batch,), generator=gen)
        scenes = [scene_of(codes[i]) for i in idx.tolist()]
        caps = [shapes.scene_caption(s) if rng.random() < FULL_CAPTIONS
                else shapes.random_caption(rng, s) for s in scenes]
        t = torch.randint(0, len(acp), (batch,), generator=gen)
        xt, log_sigma = noised(latents[idx], t, acp, gen)
        hidden = texts([c.text() for c in caps])
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, min(200, steps // 10 + 1), lr * 0.02)
        loss = multi_positive_loss(clip.logits(xt, log_sigma, hidden),
                                   fit_matrix(caps, codes[idx.numpy()]))
        optimise(opt, loss, clip.parameters())
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"[clip] step {step + 1}/{steps} loss {avg:.3f} scale "
                f"{clip.scale().item():.1f} {eta(t0, step + 1 - first, steps - step - 1)}")
        if resume_due(step, steps, save_every):
            save_resume(resume, {"clip": clip.state_dict(), "opt": opt.state_dict(),
                                 "step": step + 1, "avg": avg})
            if stop_after is not None and step + 1 >= stop_after:
                return
    save_tensors(clip, work / "clip.safetensors")
    resume.unlink(missing_ok=True)


def export(work: Path, model: Path, out: Path) -> None:
    """The noise-aware model folder (nodes.lib.noisy_models: config.json + fp16 weights)."""
    from transformers import CLIPTextConfig

    from nodes.lib.noisy_models import Space, read_folder, save_folder
    from tools.builtin.train import load_tensors

    width = CLIPTextConfig.from_pretrained(model / "text_encoder").hidden_size
    clip = new_model(width)
    load_tensors(clip, work / "clip.safetensors")
    vae_cfg = json.loads((model / "vae" / "config.json").read_text())
    space = Space("latents", int(vae_cfg["latent_channels"]), 8,
                  f"{model.name}'s VAE latents (scaling factor "
                  f"{vae_cfg['scaling_factor']:.6g}), 64x64 images")
    save_folder(clip, out, space, {"trained_with": model_identity(model),
                                   "about": "GLIDE-style noised CLIP for Loom's built-in "
                                            "text model, trained by "
                                            "tools/builtin/train_clip.py"})
    read_folder(out)
    log(f"[export] wrote {out} ({sum(f.stat().st_size for f in out.iterdir()) / 1e6:.2f} MB)")


# --------------------------------------------------------------------------------------- eval

def retrieval(clip, model: Path, latents: torch.Tensor, codes: np.ndarray, seed: int = 0,
              group: int = 64) -> dict[str, dict[str, float]]:
    """Per timestep band: top-1 caption→image and image→caption retrieval among groups of
    `group` scenes with their full captions (a pick is right when its scene fits the
    caption: two scenes with the same attributes are both right)."""
    _, text_model, tok, sched = load_parts(model)
    acp = alphas_cumprod(sched)
    scenes = [scene_of(c) for c in codes]
    caps = [shapes.scene_caption(s) for s in scenes]
    hidden = encode_text(text_model, tok, [c.text() for c in caps])
    out = {}
    with torch.no_grad():
        text = clip.encode_text(hidden)
        for lo, hi in BANDS:
            gen = torch.Generator().manual_seed(seed + lo)
            t = torch.randint(lo, hi, (len(scenes),), generator=gen)
            xt, log_sigma = noised(latents, t, acp, gen)
            image = clip.encode_image(xt, log_sigma)
            c2i = i2c = n = 0
            for g in range(0, len(scenes) - group + 1, group):
                sim = image[g:g + group] @ text[g:g + group].T
                fit = fit_matrix(caps[g:g + group], codes[g:g + group])
                cols = torch.arange(group)
                c2i += int(fit[sim.argmax(0), cols].sum())
                i2c += int(fit[cols, sim.argmax(1)].sum())
                n += group
            out[f"t {lo}-{hi - 1}"] = {"caption_to_image": c2i / n, "image_to_caption": i2c / n}
    return out


def evaluate(work: Path, model: Path, out: Path) -> dict:
    from nodes.lib.noisy_models import load_weights, read_folder

    data = np.load(work / "pool.npz")
    clip = load_weights(read_folder(out))
    table = retrieval(clip, model, torch.from_numpy(data["eval_latents"]), data["eval_codes"])
    log(f"retrieval among 64 (top-1), {len(data['eval_codes'])} held-back scenes, full "
        "captions (chance 1.6 %):")
    log("| timesteps | caption→image | image→caption |")
    log("|---|---:|---:|")
    for band, r in table.items():
        log(f"| {band} | {r['caption_to_image'] * 100:.1f} % | "
            f"{r['image_to_caption'] * 100:.1f} % |")
    # recorded in the folder, so the figures travel with the weights
    from engine.files import write_text_atomic

    config = json.loads((out / "config.json").read_text())
    config["evaluation"] = {band: {k: round(v, 4) for k, v in r.items()}
                            for band, r in table.items()}
    write_text_atomic(out / "config.json", json.dumps(config, indent=2) + "\n")
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", default="all", choices=["all", "pool", "train", "export", "eval"])
    p.add_argument("--model", type=Path, default=MODEL, help="the text-to-image model folder")
    p.add_argument("--work", type=Path, default=WORK)
    p.add_argument("--out", type=Path, default=OUT)
    p.add_argument("--seed", type=int, default=1919)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--pool", type=int, default=20000, help="training scenes encoded once")
    p.add_argument("--eval-scenes", type=int, default=512)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--quick", action="store_true", help="seconds, for checking the script")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after this many steps, as an interruption would (tests)")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.batch, a.pool, a.eval_scenes, a.save_every = 16, 16, 128, 64, 8
    if a.threads:
        torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if a.stage in ("all", "pool"):
        make_pool(a.work, a.model, a.pool, a.eval_scenes, a.seed)
    if a.stage in ("all", "train"):
        t1 = time.time()
        train(a.work, a.model, a.steps, a.batch, a.seed, a.lr, a.save_every, a.stop_after)
        log(f"[clip] trained in {(time.time() - t1) / 60:.1f} min")
    if a.stage in ("all", "export"):
        export(a.work, a.model, a.out)
    if a.stage in ("all", "eval"):
        evaluate(a.work, a.model, a.out)
    log(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
