"""Trains Loom's built-in noise-aware classifier (resources/models/loom-classifier): the ten
classes of the class-conditional built-in model (tools/builtin/train_classes.py), read from
*noisy* 32 px images, so Classifier Guidance can steer that model (Dhariwal & Nichol 2021).

    python -m tools.builtin.train_classifier           # writes resources/models/loom-classifier
                                                       # and resources/workflows/builtin/
                                                       # classifier_guidance.json
    python -m tools.builtin.train_classifier --quick   # a throwaway classifier in seconds

The data are train_classes.py's own (its classes, its drawing of an image of a class, 32 px,
[-1, 1]); each image is noised as the diffusion model noises it during sampling, with that
model's schedule read from its folder (scheduler/scheduler_config.json): ᾱ at a timestep drawn
uniformly from its training timesteps, x_t = √ᾱ·x0 + √(1−ᾱ)·ε. The classifier is told the
noise level as log σ = ½·log((1−ᾱ)/ᾱ) (nodes.lib.noisy_models: not the timestep), and learns
the class by cross-entropy at every noise level at once. It never sees the null class: its
job is to say which of the ten a noisy sample is becoming.

Held-out images (another seed) score it per noise band at the end; the figures go to the
log and into the folder's config.json ("evaluation"), so the shipped file says what it can do.

Seeded and resumable: every `--save-every` steps the whole state goes to resume.pt in --work,
and the same command continues from there after an interruption.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tools.builtin.train import eta, log, lr_at, optimise, resume_due, save_resume, seed_all
from tools.builtin.train_classes import CLASS_NAMES, SIZE, make_dataset, to_tensor

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "resources" / "models" / "loom-classes"
OUT = ROOT / "resources" / "models" / "loom-classifier"
WORKFLOW = ROOT / "resources" / "workflows" / "builtin" / "classifier_guidance.json"
BLOCK_OUT_CHANNELS = (32, 64, 128)
"""0.42 M parameters (0.85 MB in fp16). A step of 32 images costs ~0.15 s of one CPU thread,
so the default 3600 steps take 9.2 min of CPU time (the 10-minute budget). Fewer steps
under-learn the shapes: 1200 steps of 64 or 2400 of 32 (the same images seen) read 88 % of
clean held-out images right, confusing green circle/square and blue triangle/star; 3600 of 32
read 99 %."""
BANDS = ((0, 250), (250, 500), (500, 750), (750, 1000))
"""The timestep bands the held-out accuracy is reported for (low t = nearly clean)."""


def schedule_of(model: Path) -> torch.Tensor:
    """ᾱ at the training timesteps of the diffusion model in `model` (its scheduler config)."""
    from diffusers import DDPMScheduler

    config = json.loads((model / "scheduler" / "scheduler_config.json").read_text())
    sched = DDPMScheduler.from_config({k: v for k, v in config.items()
                                       if not k.startswith("_")})
    return sched.alphas_cumprod.double()


def noised(x0: torch.Tensor, t: torch.Tensor, alphas: torch.Tensor, noise: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """x_t of clean images at timesteps t, and their log σ (what the classifier is told)."""
    from nodes.lib.noisy_models import log_sigma_of

    a = alphas[t]
    xt = (a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * noise).float()
    return xt, log_sigma_of(a)


def make_classifier():
    from nodes.lib.noisy_models import EncoderConfig, NoisyClassifier

    return NoisyClassifier(EncoderConfig(in_channels=3, block_out_channels=BLOCK_OUT_CHANNELS,
                                         layers_per_block=1), CLASS_NAMES)


def train(work: Path, model: Path, steps: int, batch: int, examples: int, seed: int, lr: float,
          save_every: int = 200, stop_after: int | None = None) -> None:
    """Cross-entropy at uniformly drawn timesteps, AdamW, warm-up then cosine decay, gradients
    clipped at 1. Writes work/classifier.safetensors at the end; resume.pt on the way."""
    seed_all(seed)
    t0 = time.time()
    images, labels = make_dataset(examples, seed + 1)
    x_all, y_all = to_tensor(images), torch.from_numpy(labels)
    log(f"[classifier] drew {examples} images in {time.time() - t0:.0f} s")
    alphas = schedule_of(model)
    net = make_classifier().train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    first, avg = 0, None
    resume = work / "resume.pt"
    if resume.is_file():
        state = torch.load(resume, weights_only=True)
        net.load_state_dict(state["net"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        first, avg = int(state["step"]), float(state["avg"])
        log(f"[classifier] resuming at step {first + 1}/{steps}")
    log(f"[classifier] {sum(p.numel() for p in net.parameters()) / 1e6:.2f} M parameters, "
        f"{steps} steps of {batch}")
    t0, cpu0 = time.time(), time.process_time()
    for step in range(first, steps):
        idx = torch.randint(0, x_all.shape[0], (batch,), generator=gen)
        x0, y = x_all[idx], y_all[idx]
        t = torch.randint(0, len(alphas), (batch,), generator=gen)
        noise = torch.randn(x0.shape, generator=gen)
        xt, log_sigma = noised(x0, t, alphas, noise)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, min(100, max(1, steps // 10)), lr * 0.02)
        loss = F.cross_entropy(net(xt, log_sigma), y)
        optimise(opt, loss, net.parameters())
        avg = loss.item() if avg is None else 0.98 * avg + 0.02 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"[classifier] step {step + 1}/{steps} loss {avg:.4f} "
                f"{eta(t0, step + 1 - first, steps - step - 1)}")
        if resume_due(step, steps, save_every):
            save_resume(resume, {"net": net.state_dict(), "opt": opt.state_dict(),
                                 "gen": gen.get_state(), "step": step + 1, "avg": avg})
            if stop_after is not None and step + 1 >= stop_after:
                return
    from tools.builtin.train import save_tensors
    save_tensors(net, work / "classifier.safetensors")
    resume.unlink(missing_ok=True)
    log(f"[classifier] trained in {(time.time() - t0) / 60:.1f} min "
        f"({(time.process_time() - cpu0) / 60:.1f} min of CPU time)")


@torch.no_grad()
def evaluate(net, model: Path, n: int = 1000, seed: int = 777) -> dict[str, float]:
    """Accuracy on `n` held-out images (drawn with another seed) per timestep band, each image
    noised at a timestep drawn uniformly inside the band; "clean": the images themselves."""
    images, labels = make_dataset(n, seed)
    x0, y = to_tensor(images), torch.from_numpy(labels)
    alphas = schedule_of(model)
    gen = torch.Generator().manual_seed(seed)
    net = net.eval()
    result: dict[str, float] = {}

    def accuracy(xt, log_sigma) -> float:
        right = 0
        for i in range(0, n, 250):
            pred = net(xt[i:i + 250], log_sigma[i:i + 250]).argmax(-1)
            right += int((pred == y[i:i + 250]).sum())
        return right / n

    result["clean"] = accuracy(x0, torch.full((n,), -6.0))  # log σ range's clean end
    for lo, hi in BANDS:
        t = torch.randint(lo, hi, (n,), generator=gen)
        xt, log_sigma = noised(x0, t, alphas, torch.randn(x0.shape, generator=gen))
        result[f"t {lo}-{hi}"] = accuracy(xt, log_sigma)
    return result


def export(work: Path, model: Path, out: Path, evaluation: dict[str, float] | None = None
           ) -> None:
    """The classifier as a noise-aware model folder (fp16), written to a temp folder, loaded
    back through Loom's loader, then swapped in."""
    from nodes.lib.noisy_models import Space, load_weights, read_folder, save_folder
    from tools.builtin.train import load_tensors, swap_folder

    net = make_classifier()
    load_tensors(net, work / "classifier.safetensors")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shown = str(model.resolve().relative_to(ROOT))
    except ValueError:
        shown = str(model)
    extra = {"_loom_about": "Loom's built-in noise-aware classifier of the loom-classes "
                            "model's ten classes, trained by tools/builtin/train_classifier.py",
             "trained_with_schedule_of": shown}
    if evaluation:
        extra["evaluation"] = {k: round(v, 4) for k, v in evaluation.items()}
    save_folder(net, tmp, Space("pixels", 3, SIZE, "the loom-classes model's images"),
                extra=extra)
    load_weights(read_folder(tmp))  # round-trips through Loom's loader
    swap_folder(tmp, out)


def write_workflow(classifier: Path, model: Path = MODEL, path: Path = WORKFLOW,
                   label: str = CLASS_NAMES[0], cfg_scale: float = 1.0,
                   guide_scale: float | None = None, pure: bool = False) -> None:
    """The classifier guidance workflow (the contract: ids `label`, `noise`, `cfg`, `guide`,
    one Save Image): the class model, Class Label, CFG Combine, Load Noise-Aware Model and
    Classifier Guidance before the Sampler, DDIM 30 steps, Pixel Decode. `pure`: the CFG
    Combine's positive is the null class (an unconditional model: the class comes from the
    classifier alone); otherwise the label drives both.

    The default is the label to both at CFG 1 and the node's default guidance scale (2), as
    measured with evaluate_classes (10 classes x 8 seeds): 100 % of the images of the right
    class, as many as CFG 2, a step costing 1.2-1.5x an unguided one (the classifier's forward
    and backward) where CFG 2 costs 1.7x (a second UNet row); the class from the classifier
    alone (the null label) reached 29 % at best (scale 2; 5 % unguided), the
    toy classifier's gradient moving colours more than shapes, and larger scales push the
    samples off what the model draws."""
    from engine.files import write_text_atomic
    from engine.registry import default_registry
    from nodes.guidance import ClassifierGuidanceNode

    def link(node: str, output: str) -> dict[str, str]:
        return {"node": node, "output": output}

    def shown(p: Path) -> str:
        try:
            return str(p.resolve().relative_to(ROOT))
        except ValueError:
            return str(p)

    if guide_scale is None:
        guide_scale = float(ClassifierGuidanceNode.scale.default)
    positive = link("label", "null") if pure else link("label", "conditioning")
    nodes = {
        "loader": ("loaders.pixel_model", {"path": shown(model)}, [0, 200]),
        "label": ("conditioning.class_label", {"model": link("loader", "model"),
                                               "label": label, "null_label": -1}, [320, 40]),
        "unet": ("sampling.unet_step", {"model": link("loader", "model")}, [320, 300]),
        "noise": ("pixel.noise", {"seed": 42, "width": SIZE, "height": SIZE, "batch": 4,
                                  "model": link("loader", "model")}, [320, 460]),
        "cfg": ("sampling.cfg_combine", {"denoiser": link("unet", "denoiser"),
                                         "positive": positive,
                                         "negative": link("label", "null"),
                                         "scale": cfg_scale, "rescale": 0.0, "start": 0.0,
                                         "end": 1.0}, [640, 120]),
        "classifier": ("loaders.noisy_model", {"path": shown(classifier)}, [640, -100]),
        "guide": ("guidance.classifier", {"denoiser": link("cfg", "denoiser"),
                                          "classifier": link("classifier", "model"),
                                          "label": label, "scale": guide_scale,
                                          "start": 0.0, "end": 1.0}, [920, 20]),
        "scheduler": ("sampling.scheduler", {"model": link("loader", "model"), "name": "ddim",
                                             "steps": 30, "strength": 1.0, "start": 0.0,
                                             "end": 1.0, "eta": 0.0}, [640, 400]),
        "sampler": ("sampling.sampler", {"denoiser": link("guide", "denoiser"),
                                         "scheduler": link("scheduler", "scheduler"),
                                         "noise": link("noise", "noise")}, [1180, 200]),
        "decode": ("pixel.decode", {"sample": link("sampler", "latent")}, [1440, 200]),
        "save": ("image.save", {"images": link("decode", "image"), "prefix": "classifier"},
                 [1700, 200]),
    }
    registry = default_registry()
    doc = {"schema_version": 1, "nodes": {
        nid: {"type": t, "version": registry.get(t).version, "inputs": inputs,
              "ui": {"pos": pos}} for nid, (t, inputs, pos) in nodes.items()},
        "ui": {"title": "Loom: classifier guidance"}}
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    log(f"[export] wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", default="all", choices=["all", "train", "export"])
    p.add_argument("--model", type=Path, default=MODEL,
                   help="the diffusion model whose schedule noises the training images")
    p.add_argument("--work", type=Path, default=ROOT / "build" / "classifier")
    p.add_argument("--out", type=Path, default=None,
                   help=f"the classifier folder (default {OUT.relative_to(ROOT)}; with "
                        "--quick: WORK/quick-classifier)")
    p.add_argument("--seed", type=int, default=2468)
    p.add_argument("--steps", type=int, default=3600)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--examples", type=int, default=20000)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--save-every", type=int, default=200)
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop after the resume save at this step (to test resuming)")
    p.add_argument("--held-out", type=int, default=1000,
                   help="held-out images per noise band for the evaluation")
    p.add_argument("--workflow", type=Path, default=None,
                   help="where the export writes the classifier guidance workflow (default "
                        "the built-in one; not written with --quick unless given)")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--quick", action="store_true", help="seconds, for checking the script")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.examples, a.batch, a.held_out = 20, 200, 16, 100
        a.save_every = min(a.save_every, 10)
    out = a.out or (a.work / "quick-classifier" if a.quick else OUT)
    workflow = a.workflow or (None if a.quick else WORKFLOW)
    if a.threads:
        torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.set_flush_denormal(True)
    try:
        if a.stage in ("all", "train"):
            train(a.work, a.model, a.steps, a.batch, a.examples, a.seed, a.lr, a.save_every,
                  a.stop_after)
            if not (a.work / "classifier.safetensors").is_file():
                log(f"[classifier] stopped after step {a.stop_after}: run the same command "
                    "to continue")
                return 0
        if a.stage in ("all", "export"):
            from tools.builtin.train import load_tensors

            net = make_classifier()
            load_tensors(net, a.work / "classifier.safetensors")
            scores = evaluate(net, a.model, a.held_out)
            log("[classifier] held-out accuracy: " + ", ".join(
                f"{k} {v * 100:.1f} %" for k, v in scores.items()))
            export(a.work, a.model, out, scores)
            if workflow is not None:
                write_workflow(out, a.model, workflow)
    finally:
        torch.set_flush_denormal(False)
    log(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
