"""Trains Loom's second built-in model: a class-conditional pixel-space UNet, as the Stable
Diffusion textbook chapter trains one (a class label instead of a prompt, 32 px, no VAE,
`num_class_embeds`, labels dropped to a null class so classifier-free guidance works).

    python -m tools.builtin.train_classes            # writes resources/models/loom-classes
                                                     # and resources/workflows/builtin/
                                                     # class_conditional.json
    python -m tools.builtin.train_classes --quick    # a throwaway model in under a minute

Ten classes, each one colour+shape pair of the shapes data set (CLASS_NAMES), like the ten
classes of Fashion-MNIST or CIFAR-10 that the chapter and the DDPM folders people have use:
ten is enough for guidance to matter, few enough that each class gets thousands of examples
in a 20-minute budget, and a colour+shape pair is something the project's analyser can check
(both right = the class is right). A pair per class (not a colour or a shape alone) makes the
model learn both from one label. The nuisances are the ones a class does not fix: the
background colour, the exact size and a jitter around the centre.

The label index of the null class is len(CLASS_NAMES) (the last embedding): 10 % of the
training labels are replaced by it. The folder holds class_names.json (the names in label
order, without the null class) for Loom's Class Label node.

Seeded and resumable: every `--save-every` steps the whole state goes to resume.pt in --work,
and the same command continues from there after an interruption.
"""
from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from tools.builtin import shapes
from tools.builtin.train import eta, log, lr_at, optimise, resume_due, save_resume, seed_all

ROOT = Path(__file__).resolve().parents[2]
SIZE = 32
CLASS_NAMES = [
    "red circle", "red star", "yellow square", "yellow triangle", "green circle",
    "green square", "blue triangle", "blue star", "purple circle", "black square",
]
NULL_LABEL = len(CLASS_NAMES)
LABEL_DROP = 0.10
UNET_CONFIG = dict(
    sample_size=SIZE, in_channels=3, out_channels=3, layers_per_block=1,
    block_out_channels=[32, 64, 64],
    down_block_types=["DownBlock2D", "DownBlock2D", "AttnDownBlock2D"],
    up_block_types=["AttnUpBlock2D", "UpBlock2D", "UpBlock2D"],
    num_class_embeds=NULL_LABEL + 1, norm_num_groups=8, attention_head_dim=8,
)
SCHEDULER_CONFIG = dict(
    _class_name="DDPMScheduler", num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
    prediction_type="epsilon", clip_sample=True, clip_sample_range=1.0,
    variance_type="fixed_small",
)


def scene_for(name: str, rng: random.Random) -> shapes.Scene:
    """A large shape of the class's colour and kind near the centre of a background that
    contrasts with it (as the text model's data set chooses them)."""
    colour, shape = name.split()
    for _ in range(1000):
        background = rng.choice(list(shapes.COLOURS))
        if shapes._allowed_pair(colour, background):
            break
    return shapes.Scene(colour, shape, "large", "center", background,
                        (rng.uniform(-5, 5), rng.uniform(-5, 5)), rng.uniform(0.85, 1.15))


def draw(scene: shapes.Scene) -> np.ndarray:
    """The scene at 32 px: drawn at the data set's 64 px and box-filtered down."""
    image = Image.fromarray(shapes.render(scene)[0])
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BOX), dtype=np.uint8)


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = random.Random(seed)
    labels = np.array([i % len(CLASS_NAMES) for i in range(n)], dtype=np.int64)
    rng.shuffle(labels)
    images = np.stack([draw(scene_for(CLASS_NAMES[k], rng)) for k in labels])
    return images, labels


def to_tensor(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def make_unet():
    from diffusers import UNet2DModel
    return UNet2DModel(**UNET_CONFIG)


def make_scheduler():
    from diffusers import DDPMScheduler
    return DDPMScheduler.from_config({k: v for k, v in SCHEDULER_CONFIG.items()
                                      if not k.startswith("_")})


def train(work: Path, steps: int, batch: int, examples: int, seed: int, lr: float,
          save_every: int = 250, stop_after: int | None = None) -> None:
    """Epsilon prediction on the cosine schedule, AdamW, warm-up then cosine decay, gradients
    clipped at 1. Writes work/unet.safetensors at the end; resume.pt on the way."""
    seed_all(seed)
    t0 = time.time()
    images, labels = make_dataset(examples, seed + 1)
    x_all, y_all = to_tensor(images), torch.from_numpy(labels)
    log(f"[classes] drew {examples} images in {time.time() - t0:.0f} s")
    unet = make_unet().train()
    sched = make_scheduler()
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)
    first, avg = 0, None
    resume = work / "resume.pt"
    if resume.is_file():
        state = torch.load(resume, weights_only=True)
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        gen.set_state(state["gen"])
        first, avg = int(state["step"]), float(state["avg"])
        log(f"[classes] resuming at step {first + 1}/{steps}")
    log(f"[classes] UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.2f} M parameters, "
        f"{steps} steps of {batch}")
    t0 = time.time()
    for step in range(first, steps):
        idx = torch.randint(0, x_all.shape[0], (batch,), generator=gen)
        x0, y = x_all[idx], y_all[idx].clone()
        y[torch.rand(batch, generator=gen) < LABEL_DROP] = NULL_LABEL
        noise = torch.randn(x0.shape, generator=gen)
        t = torch.randint(0, sched.config.num_train_timesteps, (batch,), generator=gen)
        xt = sched.add_noise(x0, noise, t)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, 200, 1e-5)
        loss = F.mse_loss(unet(xt, t, class_labels=y).sample, noise)
        optimise(opt, loss, unet.parameters())
        avg = loss.item() if avg is None else 0.99 * avg + 0.01 * loss.item()
        if step % 100 == 0 or step == steps - 1:
            log(f"[classes] step {step + 1}/{steps} loss {avg:.4f} "
                f"{eta(t0, step + 1 - first, steps - step - 1)}")
        if resume_due(step, steps, save_every):
            save_resume(resume, {"unet": unet.state_dict(), "opt": opt.state_dict(),
                                 "gen": gen.get_state(), "step": step + 1, "avg": avg})
            if stop_after is not None and step + 1 >= stop_after:
                return
    from tools.builtin.train import save_tensors
    save_tensors(unet, work / "unet.safetensors")
    resume.unlink(missing_ok=True)


def export(work: Path, out: Path) -> None:
    """A diffusers DDPMPipeline folder (fp16 UNet), written to a temp folder and swapped in."""
    from diffusers import UNet2DModel

    from tools.builtin.train import load_tensors, swap_folder
    unet = make_unet()
    load_tensors(unet, work / "unet.safetensors")
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    unet.to(torch.float16).save_pretrained(tmp / "unet", safe_serialization=True)
    (tmp / "scheduler").mkdir()
    (tmp / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(SCHEDULER_CONFIG, indent=2))
    (tmp / "model_index.json").write_text(json.dumps({
        "_class_name": "DDPMPipeline", "_diffusers_version": "0.42.1",
        "_loom_about": "Loom's built-in 32x32 class-conditional shapes model, trained by "
                       "tools/builtin/train_classes.py; null class = the last label",
        "scheduler": ["diffusers", "DDPMScheduler"],
        "unet": ["diffusers", "UNet2DModel"]}, indent=2))
    (tmp / "class_names.json").write_text(json.dumps(CLASS_NAMES, indent=2))
    UNet2DModel.from_pretrained(tmp / "unet")   # round-trips through diffusers' loader
    swap_folder(tmp, out)


WORKFLOW = ROOT / "resources" / "workflows" / "builtin" / "class_conditional.json"


def write_workflow(model: Path, path: Path = WORKFLOW, scale: float = 2.0) -> None:
    """The model's workflow (the issue's contract: nodes `label`, `noise`, `cfg`, one Save
    Image): Load Pixel Model, Class Label against its null class through CFG Combine, DDIM 30
    steps, Pixel Noise at 32 px, Pixel Decode. Written with the export, so the shipped
    workflow and the model it loads come together."""
    from engine.files import write_text_atomic
    from engine.registry import default_registry

    def link(node: str, output: str) -> dict[str, str]:
        return {"node": node, "output": output}

    try:
        shown = str(model.resolve().relative_to(ROOT))
    except ValueError:
        shown = str(model)
    nodes = {
        "loader": ("loaders.pixel_model", {"path": shown}, [0, 200]),
        "label": ("conditioning.class_label", {"model": link("loader", "model"),
                                               "label": CLASS_NAMES[0], "null_label": -1},
                  [320, 40]),
        "unet": ("sampling.unet_step", {"model": link("loader", "model")}, [320, 300]),
        "noise": ("pixel.noise", {"seed": 42, "width": SIZE, "height": SIZE, "batch": 4,
                                  "model": link("loader", "model")}, [320, 460]),
        "cfg": ("sampling.cfg_combine", {"denoiser": link("unet", "denoiser"),
                                         "positive": link("label", "conditioning"),
                                         "negative": link("label", "null"), "scale": scale,
                                         "rescale": 0.0, "start": 0.0, "end": 1.0}, [640, 120]),
        "scheduler": ("sampling.scheduler", {"model": link("loader", "model"), "name": "ddim",
                                             "steps": 30, "strength": 1.0, "start": 0.0,
                                             "end": 1.0, "eta": 0.0}, [640, 400]),
        "sampler": ("sampling.sampler", {"denoiser": link("cfg", "denoiser"),
                                         "scheduler": link("scheduler", "scheduler"),
                                         "noise": link("noise", "noise")}, [960, 200]),
        "decode": ("pixel.decode", {"sample": link("sampler", "latent")}, [1260, 200]),
        "save": ("image.save", {"images": link("decode", "image"), "prefix": "class"},
                 [1540, 200]),
    }
    registry = default_registry()
    doc = {"schema_version": 1, "nodes": {
        nid: {"type": t, "version": registry.get(t).version, "inputs": inputs,
              "ui": {"pos": pos}} for nid, (t, inputs, pos) in nodes.items()}}
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    log(f"[export] wrote {path}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--stage", default="all", choices=["all", "train", "export"])
    p.add_argument("--work", type=Path, default=ROOT / "build" / "classes")
    p.add_argument("--out", type=Path, default=ROOT / "resources" / "models" / "loom-classes")
    p.add_argument("--seed", type=int, default=4321)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--examples", type=int, default=20000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--workflow", type=Path, default=WORKFLOW,
                   help="where the export writes the model's workflow")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    p.add_argument("--quick", action="store_true", help="seconds, for checking the script")
    a = p.parse_args(argv)
    if a.quick:
        a.steps, a.examples, a.batch = 20, 200, 16
    if a.threads:
        torch.set_num_threads(a.threads)
    a.work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    torch.set_flush_denormal(True)
    try:
        if a.stage in ("all", "train"):
            train(a.work, a.steps, a.batch, a.examples, a.seed, a.lr, a.save_every)
        if a.stage in ("all", "export"):
            export(a.work, a.out)
            write_workflow(a.out, a.workflow)
    finally:
        torch.set_flush_denormal(False)
    log(f"done in {(time.time() - t0) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
