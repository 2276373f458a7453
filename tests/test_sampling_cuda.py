"""On a CUDA machine: Loom's sampling graphs on the GPU give the CPU's image for the same seed
(noise is drawn on the CPU), in fp32 up to TF32/cuDNN rounding; fp16 stays finite and close.
Skipped without CUDA."""

import json
import time

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine.api import Session  # noqa: E402
from engine.node import Input, Output, RunContext, node  # noqa: E402
from engine.registry import Registry  # noqa: E402
from engine.types import STRING  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

L = lambda n, o: {"node": n, "output": o}  # noqa: E731


@node("gpu.bundle", title="t", category="t", version="1.0.0",
      outputs=[Output("model", "MODEL"), Output("vae", "VAE"), Output("pos", "CONDITIONING"),
               Output("neg", "CONDITIONING")])
class Bundle:
    device = Input(STRING, default="cpu")
    dtype = Input(STRING, default="float32")
    in_channels = Input("INT", default=4)

    def run(self, ctx: RunContext):
        from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel

        from nodes.lib.bundles import Conditioning, ModelBundle, VaeBundle
        dt = getattr(torch, self.dtype)
        torch.manual_seed(0)
        unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=1, sample_size=8,
                                    in_channels=self.in_channels, out_channels=4,
                                    norm_num_groups=8, cross_attention_dim=32, attention_head_dim=4,
                                    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))
        torch.manual_seed(0)
        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(16,) * 4,
                            layers_per_block=1, norm_num_groups=8, latent_channels=4)
        sched = dict(PNDMScheduler(beta_schedule="scaled_linear", beta_start=0.00085,
                                   beta_end=0.012, skip_prk_steps=True, steps_offset=1).config)
        dev = torch.device(self.device)
        unet.to(dev, dt).eval()
        vae.to(dev, dt).eval()
        g = torch.Generator().manual_seed(3)
        pos = Conditioning(torch.randn(1, 77, 32, generator=g))
        neg = Conditioning(torch.randn(1, 77, 32, generator=g))
        fam = "sd_inpaint" if self.in_channels == 9 else "sd1"
        return (ModelBundle(unet, fam, "epsilon", sched, dt, dev, "t"),
                VaeBundle(vae, fam, 0.18215, dt, dev, "t", force_upcast=True), pos, neg)


@node("gpu.image", title="t", category="t", version="1.0.0",
      outputs=[Output("image", "IMAGE"), Output("mask", "MASK")])
class Img:
    def run(self, ctx):
        g = torch.Generator().manual_seed(5)
        mask = torch.zeros(1, 1, 64, 64)
        mask[..., 8:40, 16:48] = 1
        return torch.rand(1, 3, 64, 64, generator=g), mask


def graph(device, dtype, kind, sched):
    n = {
        "b": {"type": "gpu.bundle", "device": device, "dtype": dtype,
              "in_channels": 9 if kind == "inpaint9" else 4},
        "img": {"type": "gpu.image"},
        "noise": {"type": "latents.noise", "seed": 11, "width": 64, "height": 64, "batch": 2,
                  "model": L("b", "model")},
        "sched": {"type": "sampling.scheduler", "model": L("b", "model"), "name": sched,
                  "steps": 4},
        "unet": {"type": "sampling.unet_step", "model": L("b", "model")},
        "cfg": {"type": "sampling.cfg_combine", "denoiser": L("unet", "denoiser"),
                "positive": L("b", "pos"), "negative": L("b", "neg"), "scale": 6.0, "rescale": 0.3},
        "sampler": {"type": "sampling.sampler", "denoiser": L("cfg", "denoiser"),
                    "scheduler": L("sched", "scheduler"), "noise": L("noise", "noise")},
        "decode": {"type": "latents.vae_decode", "vae": L("b", "vae"),
                   "latent": L("sampler", "latent")},
    }
    if kind in ("img2img", "inpaint4"):
        n["enc"] = {"type": "latents.vae_encode", "vae": L("b", "vae"),
                    "image": L("img", "image"), "seed": 11}
        n["noise"]["after"] = L("enc", "rng")
        n["sampler"]["init"] = L("enc", "latent")
        if kind == "img2img":
            n["sched"]["strength"] = 0.6
        else:
            n["sampler"]["mask"] = L("img", "mask")
    if kind == "inpaint9":
        n["prep"] = {"type": "inpaint.prepare", "vae": L("b", "vae"), "image": L("img", "image"),
                     "mask": L("img", "mask"), "after": L("noise", "rng")}
        n["sampler"]["image_cond"] = L("prep", "image_cond")
    if kind == "hires":
        n["resize"] = {"type": "upscale.latent_resize", "latent": L("sampler", "latent"),
                       "scale": 2.0}
        n["noise2"] = {"type": "latents.noise", "seed": 12, "width": 128, "height": 128, "batch": 2,
                       "model": L("b", "model")}
        n["sched2"] = {"type": "sampling.scheduler", "model": L("b", "model"), "name": sched,
                       "steps": 4, "strength": 0.5}
        n["sampler2"] = {"type": "sampling.sampler", "denoiser": L("cfg", "denoiser"),
                         "scheduler": L("sched2", "scheduler"), "noise": L("noise2", "noise"),
                         "init": L("resize", "latent")}
        n["decode"]["latent"] = L("sampler2", "latent")
    return n


def run(sess, nodes, path):
    doc = {"schema_version": 1,
           "nodes": {k: {"type": v.pop("type"), "inputs": v} for k, v in nodes.items()}}
    path.write_text(json.dumps(doc))
    g = sess.load(path)
    t = time.time()
    r = sess.run(g, outputs=["decode"])
    assert r.ok, {k: e.traceback for k, e in r.errors.items()}
    return r.output("decode", "image"), time.time() - t



@pytest.fixture(scope="module")
def sess():
    reg = Registry().discover("nodes")
    reg.register(Bundle)
    reg.register(Img)
    return Session(reg)


@pytest.mark.parametrize("kind,sched", [
    ("txt2img", "euler_ancestral"), ("txt2img", "dpmpp_2m_karras"), ("img2img", "ddim"),
    ("inpaint4", "euler_ancestral"), ("inpaint9", "dpmpp_2m_karras"), ("hires", "ddim")])
def test_cuda_matches_cpu(sess, tmp_path, kind, sched):
    cpu, _ = run(sess, graph("cpu", "float32", kind, sched), tmp_path / "cpu.json")
    gpu, t32 = run(sess, graph("cuda", "float32", kind, sched), tmp_path / "gpu.json")
    half, t16 = run(sess, graph("cuda", "float16", kind, sched), tmp_path / "half.json")
    d32 = (cpu - gpu).abs().max().item()
    d16 = (cpu - half).abs().max().item()
    print(f"{kind} {sched}: cuda fp32 vs cpu {d32:.2e}, cuda fp16 vs cpu {d16:.2e} "
          f"({t32:.2f}s, {t16:.2f}s)")
    assert gpu.device.type == "cpu" and half.device.type == "cpu"  # IMAGE lives on the CPU
    assert d32 < 1e-2
    assert torch.isfinite(half).all() and d16 < 0.1
