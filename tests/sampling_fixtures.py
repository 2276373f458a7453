"""Tiny random-weight diffusion models for the sampling tests, and a Loom session to run them.

Models are built from configs (never from a hub), saved as diffusers folders, and loaded back
both by diffusers (the reference) and by Loom's `loaders.checkpoint`. When the loader and
conditioning nodes are not present yet, minimal stand-ins registered only in the test registry
take their place (`testing.checkpoint`, `testing.text_encode`).

The last part holds what the tests comparing Loom's images with diffusers' share: import the
fixtures `one_torch_thread` (module-wide, autouse) and `sess` by name to use them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from engine.api import Session  # noqa: E402
from engine.node import Input, Output, RunContext, node  # noqa: E402
from engine.registry import Registry  # noqa: E402
from engine.types import STRING  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TOKENIZER = ROOT / "resources" / "tokenizers" / "clip"


# ---- tiny components ------------------------------------------------------------------------


def tiny_vae(latent_channels: int = 4, blocks: int = 4, scaling_factor: float = 0.18215):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        block_out_channels=(16,) * blocks, layers_per_block=1, norm_num_groups=8,
        sample_size=64, scaling_factor=scaling_factor)


def tiny_text_encoder(hidden: int = 32, projection: int | None = None, seed: int = 0):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=hidden, intermediate_size=37,
                         num_attention_heads=4, num_hidden_layers=2, max_position_embeddings=77,
                         projection_dim=projection or hidden, hidden_act="gelu", eos_token_id=2,
                         bos_token_id=0, pad_token_id=1)
    if projection is not None:
        return CLIPTextModelWithProjection(cfg)
    return CLIPTextModel(cfg)


def tokenizer():
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(TOKENIZER))


def tiny_unet(in_channels: int = 4, cross: int = 32, **kw):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    args = dict(block_out_channels=(16, 32), layers_per_block=1, sample_size=8,
                in_channels=in_channels, out_channels=4, norm_num_groups=8,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                cross_attention_dim=cross, attention_head_dim=4)
    args.update(kw)
    return UNet2DConditionModel(**args)


def sd_scheduler(prediction_type: str = "epsilon"):
    from diffusers import PNDMScheduler

    return PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                         num_train_timesteps=1000, skip_prk_steps=True, steps_offset=1,
                         set_alpha_to_one=False, prediction_type=prediction_type)


def build_sd(folder: Path, in_channels: int = 4, prediction_type: str = "epsilon",
             inpaint: bool = False) -> Path:
    from diffusers import StableDiffusionInpaintPipeline, StableDiffusionPipeline

    cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionPipeline
    pipe = cls(vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tokenizer(),
               unet=tiny_unet(in_channels), scheduler=sd_scheduler(prediction_type),
               safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    return folder


def build_sdxl(folder: Path, refiner: bool = False) -> Path:
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    te2 = tiny_text_encoder(32, projection=32, seed=1)
    unet = tiny_unet(cross=64 if not refiner else 32,
                     addition_embed_type="text_time", addition_time_embed_dim=8,
                     projection_class_embeddings_input_dim=(8 * (5 if refiner else 6) + 32),
                     transformer_layers_per_block=1, use_linear_projection=True)
    sched = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                   beta_schedule="scaled_linear", num_train_timesteps=1000,
                                   steps_offset=1, timestep_spacing="leading")
    if refiner:
        pipe = StableDiffusionXLImg2ImgPipeline(
            vae=tiny_vae(), text_encoder=None, text_encoder_2=te2, tokenizer=None,
            tokenizer_2=tokenizer(), unet=unet, scheduler=sched,
            requires_aesthetics_score=True, force_zeros_for_empty_prompt=False)
    else:
        pipe = StableDiffusionXLPipeline(
            vae=tiny_vae(), text_encoder=tiny_text_encoder(32), text_encoder_2=te2,
            tokenizer=tokenizer(), tokenizer_2=tokenizer(), unet=unet, scheduler=sched,
            force_zeros_for_empty_prompt=False)
    pipe.save_pretrained(folder)
    return folder


def build_x4(folder: Path) -> Path:
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    unet = tiny_unet(in_channels=7, num_class_embeds=1000)
    low_res = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear",
                            num_train_timesteps=1000, clip_sample=False)
    sched = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                          num_train_timesteps=1000, clip_sample=False, set_alpha_to_one=False,
                          steps_offset=1, prediction_type="v_prediction")
    pipe = StableDiffusionUpscalePipeline(
        vae=tiny_vae(blocks=3, scaling_factor=0.08333), text_encoder=tiny_text_encoder(),
        tokenizer=tokenizer(), unet=unet, low_res_scheduler=low_res, scheduler=sched,
        max_noise_level=350)
    pipe.save_pretrained(folder)
    return folder


def build_latent_x2(folder: Path) -> Path:
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionLatentUpscalePipeline,
        UNet2DConditionModel,
    )

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        act_fn="gelu", attention_head_dim=8, norm_num_groups=None,
        block_out_channels=(32, 32, 64, 64), time_cond_proj_dim=128 + 32, conv_in_kernel=1,
        conv_out_kernel=1, cross_attention_dim=32,
        down_block_types=("KDownBlock2D",) + ("KCrossAttnDownBlock2D",) * 3,
        up_block_types=("KCrossAttnUpBlock2D",) * 3 + ("KUpBlock2D",), in_channels=8,
        mid_block_type=None, only_cross_attention=False, out_channels=5,
        resnet_time_scale_shift="scale_shift", time_embedding_type="fourier",
        timestep_post_act="gelu", layers_per_block=1, sample_size=16)
    sched = EulerDiscreteScheduler(prediction_type="sample")
    pipe = StableDiffusionLatentUpscalePipeline(
        vae=tiny_vae(), text_encoder=tiny_text_encoder(), tokenizer=tokenizer(), unet=unet,
        scheduler=sched)
    pipe.save_pretrained(folder)
    return folder


# ---- stand-ins for the loader / text encoder nodes ----------------------------------------


@node("testing.checkpoint", title="Test Checkpoint", category="testing", version="1.0.0",
      outputs=[Output("model", "MODEL"), Output("clip", "CLIP"), Output("vae", "VAE")])
class StandInCheckpoint:
    """Load a diffusers folder into bundles (only for tests, until loaders.checkpoint exists)."""

    path = Input(STRING, path=True)
    family = Input(STRING, default="sd1")

    def run(self, ctx: RunContext):
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

        from nodes.lib.bundles import ClipBundle, ModelBundle, VaeBundle

        root = Path(self.path)
        unet = UNet2DConditionModel.from_pretrained(root / "unet").eval()
        sched = json.loads((root / "scheduler" / "scheduler_config.json").read_text())
        extra = {}
        if (root / "low_res_scheduler").is_dir():
            extra["low_res_scheduler"] = json.loads(
                (root / "low_res_scheduler" / "scheduler_config.json").read_text())
        model = ModelBundle(unet, self.family, sched.get("prediction_type", "epsilon"), sched,
                            torch.float32, torch.device("cpu"), str(root), extra)
        toks, encs = [], []
        for sub, tsub, cls in (("text_encoder", "tokenizer", CLIPTextModel),
                               ("text_encoder_2", "tokenizer_2", CLIPTextModelWithProjection)):
            if (root / sub).is_dir():
                encs.append(cls.from_pretrained(root / sub).eval())
                toks.append(CLIPTokenizer.from_pretrained(root / tsub))
        clip = ClipBundle(toks, encs, self.family, torch.float32, torch.device("cpu"), str(root))
        vae_m = AutoencoderKL.from_pretrained(root / "vae").eval()
        vae = VaeBundle(vae_m, self.family, vae_m.config.scaling_factor, torch.float32,
                        torch.device("cpu"), str(root))
        return model, clip, vae


@node("testing.text_encode", title="Test Text Encode", category="testing", version="1.0.0",
      outputs=[Output("conditioning", "CONDITIONING")])
class StandInTextEncode:
    """Encode a prompt as diffusers' SD / SDXL pipelines do (only for tests)."""

    clip = Input("CLIP")
    text = Input(STRING, default="")
    original_size = Input(STRING, default="", description="SDXL: 'h,w'")
    crops = Input(STRING, default="", description="SDXL: 'top,left'")
    target_size = Input(STRING, default="", description="SDXL: 'h,w'")

    def run(self, ctx: RunContext):
        from nodes.lib.bundles import Conditioning

        clip = self.clip
        outs, pooled = [], None
        with torch.no_grad():
            for tok, enc in zip(clip.tokenizers, clip.text_encoders):
                ids = tok(self.text, padding="max_length", max_length=tok.model_max_length,
                          truncation=True, return_tensors="pt").input_ids
                if clip.family == "sd_latent_upscaler":
                    out = enc(ids, output_hidden_states=True)
                    pooled = out.pooler_output
                    outs.append(out.hidden_states[-1])
                elif clip.family.startswith("sdxl"):
                    out = enc(ids, output_hidden_states=True)
                    pooled = out[0]
                    outs.append(out.hidden_states[-2])
                else:
                    outs.append(enc(ids)[0])
        extra = {}
        for key, value in (("original_size", self.original_size),
                           ("crops_coords_top_left", self.crops),
                           ("target_size", self.target_size)):
            if value:
                extra[key] = tuple(int(v) for v in value.split(","))
        return Conditioning(torch.cat(outs, dim=-1), pooled, clip.family, extra)


def registry() -> Registry:
    reg = Registry().discover("nodes")
    reg.register(StandInCheckpoint)
    reg.register(StandInTextEncode)
    return reg


def have_loader(reg: Registry) -> bool:
    return "loaders.checkpoint" in reg and "conditioning.text_encode" in reg


def session() -> Session:
    return Session(registry())


def checkpoint_node(reg: Registry, folder: Path, family: str) -> dict[str, Any]:
    """A node loading `folder`: the real `loaders.checkpoint` when it exists (its path input
    found by introspection), else the stand-in."""
    spec = reg.get("loaders.checkpoint")
    if spec is not None and os.environ.get("LOOM_TEST_STANDIN") != "1":
        path_input = next(i.name for i in spec.inputs.values() if i.path)
        return {"type": "loaders.checkpoint", path_input: str(folder)}
    return {"type": "testing.checkpoint", "path": str(folder), "family": family}


def encode_node(reg: Registry, clip: dict[str, str], text: str, **micro: str) -> dict[str, Any]:
    """A prompt encoder: the real `conditioning.text_encode` when it exists (unless SDXL
    micro-conditioning is asked for, which the stand-in carries), else the stand-in."""
    spec = reg.get("conditioning.text_encode")
    if spec is not None and not micro and os.environ.get("LOOM_TEST_STANDIN") != "1":
        clip_input = next(i.name for i in spec.inputs.values() if i.type == "CLIP")
        text_input = next(i.name for i in spec.inputs.values() if i.type == "STRING"
                          and i.multiline) if any(i.multiline for i in spec.inputs.values()) \
            else "text"
        return {"type": "conditioning.text_encode", clip_input: clip, text_input: text}
    return {"type": "testing.text_encode", "clip": clip, "text": text, **micro}


def conditioning_output(node: dict[str, Any], reg: Registry) -> str:
    spec = reg.get(node["type"])
    return next(o.name for o in spec.outputs if o.type == "CONDITIONING")


def model_nodes(reg: Registry, folder: Path, family: str, prompt: str, negative: str,
                suffix: str = "", **micro: str) -> dict[str, Any]:
    """Checkpoint "ckpt<suffix>" and prompts "pos<suffix>" / "neg<suffix>"."""
    ckpt = f"ckpt{suffix}"
    pos = encode_node(reg, link(ckpt, "clip"), prompt, **micro)
    neg = encode_node(reg, link(ckpt, "clip"), negative, **micro)
    return {ckpt: checkpoint_node(reg, folder, family), f"pos{suffix}": pos,
            f"neg{suffix}": neg}


def cond_link(nodes: dict[str, Any], node_id: str, reg: Registry) -> dict[str, str]:
    return link(node_id, conditioning_output(nodes[node_id], reg))


def link(node_id: str, output: str) -> dict[str, str]:
    return {"node": node_id, "output": output}


def write_workflow(path: Path, nodes: dict[str, Any]) -> Path:
    doc = {"schema_version": 1, "ui": {},
           "nodes": {nid: {"type": n.pop("type"), "inputs": n} for nid, n in nodes.items()}}
    path.write_text(json.dumps(doc, indent=2))
    return path


def run_nodes(sess, tmp_path: Path, nodes: dict[str, Any],
              outputs: tuple[str, ...] = ("decode", "sampler")):
    """Write `nodes` (a copy) as a workflow in tmp_path, run it to `outputs` on the CPU through
    the session, assert it succeeded (the errors with tracebacks if not), return the result."""
    import copy

    tmp_path.mkdir(parents=True, exist_ok=True)
    graph = sess.load(write_workflow(tmp_path / "workflow.json", copy.deepcopy(nodes)))
    result = sess.run(graph, outputs=list(outputs), output_dir=tmp_path / "out", device="cpu")
    assert result.ok, {k: (e.message, e.traceback) for k, e in result.errors.items()}
    return result


def node_errors(sess, tmp_path: Path, nodes: dict[str, Any]) -> dict:
    """Run `nodes` (a copy) to `decode`, assert it failed, return the errors by node id."""
    import copy

    tmp_path.mkdir(parents=True, exist_ok=True)
    graph = sess.load(write_workflow(tmp_path / "workflow.json", copy.deepcopy(nodes)))
    result = sess.run(graph, outputs=["decode"], output_dir=tmp_path / "out", device="cpu")
    assert not result.ok
    return result.errors


# ---- comparing Loom's images with diffusers' ------------------------------------------------

TOL = 1e-4
SEED = 42
PROMPT = "a red circle on a blue background"
_SHARED_REGISTRY: Registry | None = None


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One torch thread for the module's tests (float sums in the same order as diffusers')."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def sess() -> Session:
    return session()


def reg() -> Registry:
    """One registry (with the stand-ins) built on first use, for building node dicts."""
    global _SHARED_REGISTRY
    if _SHARED_REGISTRY is None:
        _SHARED_REGISTRY = registry()
    return _SHARED_REGISTRY


def generator(seed: int = SEED):
    return torch.Generator("cpu").manual_seed(seed)


def as_image(np_images) -> torch.Tensor:
    return torch.from_numpy(np.asarray(np_images)).permute(0, 3, 1, 2)


def base_nodes(folder: Path, family: str = "sd1", negative: str = "", **micro: str) -> dict:
    return {
        **model_nodes(reg(), folder, family, PROMPT, negative, **micro),
        "unet": {"type": "sampling.unet_step", "model": link("ckpt", "model")},
        "decode": {"type": "latents.vae_decode", "vae": link("ckpt", "vae"),
                   "latent": link("sampler", "latent")},
        "save": {"type": "image.save", "images": link("decode", "image"), "prefix": "eq"},
    }


def txt2img_nodes(folder: Path, scheduler: str, steps: int = 3, scale: float = 7.0,
                  rescale: float = 0.0, negative: str = "", size: int = 64, seed: int = SEED,
                  family: str = "sd1", **micro: str) -> dict:
    nodes = base_nodes(folder, family, negative, **micro)
    nodes.update({
        "noise": {"type": "latents.noise", "seed": seed, "width": size, "height": size,
                  "batch": 1, "model": link("ckpt", "model")},
        "sched": {"type": "sampling.scheduler", "model": link("ckpt", "model"),
                  "name": scheduler, "steps": steps},
        "cfg": {"type": "sampling.cfg_combine", "denoiser": link("unet", "denoiser"),
                "positive": cond_link(nodes, "pos", reg()),
                "negative": cond_link(nodes, "neg", reg()),
                "scale": scale, "rescale": rescale},
        "sampler": {"type": "sampling.sampler", "denoiser": link("cfg", "denoiser"),
                    "scheduler": link("sched", "scheduler"), "noise": link("noise", "noise")},
    })
    return nodes


def small_txt2img(folder: Path, seed: int = 1, steps: int = 4, scheduler: str = "ddim") -> dict:
    """A 32x32 SD txt2img ending in a preview (a fresh registry for the node dicts)."""
    reg_ = registry()
    nodes = model_nodes(reg_, folder, "sd1", "a star", "")
    return {
        **nodes,
        "noise": {"type": "latents.noise", "seed": seed, "width": 32, "height": 32,
                  "model": link("ckpt", "model")},
        "sched": {"type": "sampling.scheduler", "model": link("ckpt", "model"),
                  "name": scheduler, "steps": steps},
        "unet": {"type": "sampling.unet_step", "model": link("ckpt", "model")},
        "cfg": {"type": "sampling.cfg_combine", "denoiser": link("unet", "denoiser"),
                "positive": cond_link(nodes, "pos", reg_),
                "negative": cond_link(nodes, "neg", reg_)},
        "sampler": {"type": "sampling.sampler", "denoiser": link("cfg", "denoiser"),
                    "scheduler": link("sched", "scheduler"), "noise": link("noise", "noise")},
        "decode": {"type": "latents.vae_decode", "vae": link("ckpt", "vae"),
                   "latent": link("sampler", "latent")},
        "preview": {"type": "image.preview", "images": link("decode", "image")},
    }


def run_loom(sess, tmp_path: Path, nodes: dict) -> torch.Tensor:
    """Run `nodes` (one saved image) on the CPU; the decoded image."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    wf = write_workflow(tmp_path / "workflow.json", nodes)
    graph = sess.load(wf)
    result = sess.run(graph, output_dir=tmp_path / "out", device="cpu")
    assert result.ok, {k: (e.message, e.traceback) for k, e in result.errors.items()}
    assert len(result.files) == 1
    return result.output("decode", "image")


def use_scheduler(pipe, name: str):
    from nodes.lib.schedules import SchedulerSpec

    pipe.scheduler = SchedulerSpec(name, dict(pipe.scheduler.config), 1).build()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assert_close(loom: torch.Tensor, ref: torch.Tensor, record: str) -> float:
    """Loom's image equals the reference within TOL; the largest difference."""
    assert loom.shape == ref.shape
    diff = (loom.float() - ref.float()).abs().max().item()
    print(f"[equality] {record}: max abs diff {diff:.3g}")
    assert diff <= TOL, f"{record}: max abs difference {diff}"
    assert ref.std() > 0.01  # a real picture, not a constant
    return diff
