"""Writes the workflows that use the built-in model: resources/workflows/default.json and the
examples under resources/workflows/builtin/. Run after changing a node's inputs:

    python -m tools.builtin.workflows
"""
from __future__ import annotations

import json
from pathlib import Path

from engine.workflow import atomic_write_text

ROOT = Path(__file__).resolve().parents[2]
MODEL = "resources/models/loom-shapes"
# Guidance 5 on the noisiest half of the denoising only (Kynkäänniemi et al. 2024), with
# guidance rescale 0.7 (Lin et al. 2023; the model is v-prediction on a zero-terminal-SNR
# schedule). Measured on the evaluation's prompts: guided on every step, 5 costs this model a
# quarter of its shapes (held-in shape 58 %); on the first half, where what and where are
# decided, it follows the prompt better than no guidance on colour, shape and position
# (background is 100 % either way; README: the sweep), and each unguided step costs one UNet
# row, not two.
GUIDANCE = 5.0
GUIDANCE_INTERVAL = (0.0, 0.5)
RESCALE = 0.7
STEPS = 20


def link(node: str, output: str) -> dict:
    return {"node": node, "output": output}


def _n(type_id: str, inputs: dict, pos: tuple[int, int], **ui) -> dict:
    from engine.registry import default_registry
    return {"type": type_id, "version": default_registry().get(type_id).version,
            "inputs": inputs, "ui": {"pos": list(pos), **ui}}


def txt2img(prompt: str, negative: str = "", seed: int = 42, batch: int = 4,
            prefix: str = "loom") -> dict[str, dict]:
    """The default graph, with the node ids scripts and docs rely on."""
    return {
        "checkpoint": _n("loaders.checkpoint", {"path": MODEL}, (0, 220)),
        "prompt": _n("conditioning.text_encode", {"clip": link("checkpoint", "clip"),
                                                  "text": prompt}, (340, 20)),
        "negative": _n("conditioning.negative_prompt", {"clip": link("checkpoint", "clip"),
                                                        "text": negative}, (340, 300)),
        "unet": _n("sampling.unet_step", {"model": link("checkpoint", "model")}, (340, 520)),
        "noise": _n("latents.noise", {"seed": seed, "width": 64, "height": 64, "batch": batch,
                                      "model": link("checkpoint", "model")}, (680, 20)),
        "cfg": _n("sampling.cfg_combine", {"denoiser": link("unet", "denoiser"),
                                           "positive": link("prompt", "conditioning"),
                                           "negative": link("negative", "conditioning"),
                                           "scale": GUIDANCE, "rescale": RESCALE,
                                           "start": GUIDANCE_INTERVAL[0],
                                           "end": GUIDANCE_INTERVAL[1]}, (680, 300)),
        "scheduler": _n("sampling.scheduler", {"model": link("checkpoint", "model"),
                                               "name": "dpmpp_2m", "steps": STEPS,
                                               "strength": 1.0, "start": 0.0, "end": 1.0},
                        (680, 520)),
        "sampler": _n("sampling.sampler", {"denoiser": link("cfg", "denoiser"),
                                           "scheduler": link("scheduler", "scheduler"),
                                           "noise": link("noise", "noise")}, (1020, 300)),
        "decode": _n("latents.vae_decode", {"vae": link("checkpoint", "vae"),
                                            "latent": link("sampler", "latent")}, (1300, 300)),
        "save": _n("image.save", {"images": link("decode", "image"), "prefix": prefix},
                   (1560, 300)),
    }


def workflow(nodes: dict, title: str) -> dict:
    return {"schema_version": 1, "nodes": nodes, "ui": {"title": title}}


def default() -> dict:
    return workflow(txt2img("a yellow star on a blue background"), "Loom: text to image")


def negative_prompt() -> dict:
    nodes = txt2img("a circle", negative="red", prefix="negative")
    # guided on every step: a negative prompt steers away from what it names all the way down
    # (with the previous UNet, guided on the first half only, "red" still came out in 11 % of
    # the images instead of 22 %; on every step in none, and with this UNet 17 % -> 0 %);
    # "a circle" names no colour for full guidance to over-saturate
    nodes["cfg"]["inputs"]["end"] = 1.0
    return workflow(nodes, "Built-in model: negative prompt (a circle, but not red)")


def img2img() -> dict:
    nodes = txt2img("a large green square in the center on a black background", batch=1,
                    prefix="img2img")
    nodes["image"] = _n("image.load", {"image": "resources/workflows/builtin/input.png"},
                        (340, 760))
    nodes["encode"] = _n("latents.vae_encode", {"vae": link("checkpoint", "vae"),
                                               "image": link("image", "image"),
                                               "mode": "sample", "seed": 0}, (680, 760))
    nodes["scheduler"]["inputs"]["strength"] = 0.6
    nodes["sampler"]["inputs"]["init"] = link("encode", "latent")
    return workflow(nodes, "Built-in model: image to image at strength 0.6")


def inpaint() -> dict:
    nodes = txt2img("a yellow star on a white background", batch=1, prefix="inpaint")
    nodes["image"] = _n("image.load", {"image": "resources/workflows/builtin/input_center.png"},
                        (340, 760))
    nodes["mask"] = _n("image.load_mask", {"image": "resources/workflows/builtin/mask_center.png",
                                           "channel": "luminance", "invert": False}, (340, 960))
    nodes["encode"] = _n("latents.vae_encode", {"vae": link("checkpoint", "vae"),
                                               "image": link("image", "image"),
                                               "mode": "mean", "seed": 0}, (680, 760))
    nodes["sampler"]["inputs"]["init"] = link("encode", "latent")
    nodes["sampler"]["inputs"]["mask"] = link("mask", "mask")
    # the VAE decoder sees the whole latent, so unmasked pixels drift a little: paste back
    nodes["composite"] = _n("image.composite", {"base": link("image", "image"),
                                                "image": link("decode", "image"),
                                                "mask": link("mask", "mask"), "feather": 2},
                            (1560, 300))
    nodes["save"]["inputs"]["images"] = link("composite", "image")
    nodes["save"]["ui"]["pos"] = [1820, 300]
    return workflow(nodes, "Built-in model: inpaint, the red circle in the masked middle "
                           "becomes a yellow star (blend)")


def upscale() -> dict:
    nodes = txt2img("a large pink star at the top left on a gray background", batch=1,
                    prefix="upscale")
    nodes["resample"] = _n("upscale.resample", {"image": link("decode", "image"),
                                                "scale": 4.0, "method": "lanczos"},
                           (1560, 300))
    nodes["save"]["inputs"]["images"] = link("resample", "image")
    nodes["save"]["ui"]["pos"] = [1820, 300]
    return workflow(nodes, "Built-in model: 64×64 then 4× Lanczos upscale")


def seed_sweep(seeds=(1, 2, 3, 4)) -> dict:
    """One prompt, four seeds: the prompt is encoded once and shared by the four samplers."""
    nodes = txt2img("a small red circle on a white background", batch=1, prefix="sweep")
    for n in ("noise", "sampler", "decode", "save"):
        base = nodes.pop(n)
        for i, seed in enumerate(seeds):
            node = json.loads(json.dumps(base))
            node["ui"]["pos"][1] = 20 + 260 * i
            inp = node["inputs"]
            if n == "noise":
                inp["seed"] = seed
            elif n == "sampler":
                inp["noise"] = link(f"noise_{seed}", "noise")
            elif n == "decode":
                inp["latent"] = link(f"sampler_{seed}", "latent")
            else:
                inp["images"] = link(f"decode_{seed}", "image")
                inp["prefix"] = f"sweep_seed{seed}"
            nodes[f"{n}_{seed}"] = node
    return workflow(nodes, "Built-in model: one prompt, four seeds")


CLIP_MODEL = "resources/models/loom-clip"
CLIP_SCALE = 3.0
"""The CLIP Guidance example's scale: nodes.guidance.DEFAULT_CLIP_SCALE says why."""


def clip_guidance() -> dict:
    """GLIDE's CLIP guidance on the built-in model: the conditional model alone (CFG scale 1,
    as GLIDE guides it), pulled by the noise-aware CLIP (resources/models/loom-clip) towards
    the prompt, which the CLIP reads as the Text Encoder's output."""
    nodes = txt2img("a small green circle at the top right on a purple background",
                    prefix="clip_guidance")
    nodes["cfg"]["inputs"].update(scale=1.0, rescale=0.0, start=0.0, end=1.0)
    nodes["clip"] = _n("loaders.noisy_model", {"path": CLIP_MODEL}, (680, 760))
    nodes["guide"] = _n("guidance.clip", {"denoiser": link("cfg", "denoiser"),
                                          "clip": link("clip", "model"),
                                          "prompt": link("prompt", "conditioning"),
                                          "scale": CLIP_SCALE, "start": 0.0, "end": 1.0},
                        (1020, 400))
    nodes["sampler"]["inputs"]["denoiser"] = link("guide", "denoiser")
    for nid, x in (("sampler", 1260), ("decode", 1520), ("save", 1760)):
        nodes[nid]["ui"]["pos"][0] = x
    return workflow(nodes, "Built-in model: CLIP guidance (GLIDE), conditional model at CFG 1 "
                           "pulled towards the prompt by a noise-aware CLIP")


FILES = {
    "default.json": default,
    "builtin/negative_prompt.json": negative_prompt,
    "builtin/img2img.json": img2img,
    "builtin/inpaint.json": inpaint,
    "builtin/upscale.json": upscale,
    "builtin/seed_sweep.json": seed_sweep,
    "builtin/clip_guidance.json": clip_guidance,
}


def write_inputs(folder: Path) -> None:
    """The image and mask the img2img and inpaint examples read (drawn, not trained)."""
    import numpy as np
    from PIL import Image

    from tools.builtin import shapes
    image, _ = shapes.render(shapes.Scene("red", "circle", "large", "left", "white"))
    Image.fromarray(image).save(folder / "input.png")
    # inpaint: the object in the middle is masked (48×48 of 64×64); the model draws one object
    # per picture, so it replaces the circle instead of adding a second shape beside it
    image, _ = shapes.render(shapes.Scene("red", "circle", "large", "center", "white"))
    Image.fromarray(image).save(folder / "input_center.png")
    mask = np.zeros((shapes.SIZE, shapes.SIZE), np.uint8)
    mask[8:56, 8:56] = 255
    Image.fromarray(mask).save(folder / "mask_center.png")


def main() -> None:
    base = ROOT / "resources" / "workflows"
    write_inputs(base / "builtin")
    for name, make in FILES.items():
        atomic_write_text(base / name, json.dumps(make(), indent=2) + "\n")
        print(base / name)


if __name__ == "__main__":
    main()
