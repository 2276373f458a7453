"""Checkpoint loading: family detection, single-file and diffusers-folder loading to the exact
weights, the shipped configs, the model cache, and refusing pickled code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "resources" / "configs"


def test_node_modules_import_no_torch():
    code = ("import sys; import nodes.loaders, nodes.conditioning; "
            "import nodes.lib.families, nodes.lib.model_manager; "
            "bad = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]; "
            "print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def test_node_specs():
    from engine.registry import Registry

    reg = Registry().discover("nodes")
    ck = reg.get("loaders.checkpoint")
    assert [o.name for o in ck.outputs] == ["model", "clip", "vae"]
    assert [o.type for o in ck.outputs] == ["MODEL", "CLIP", "VAE"]
    assert ck.inputs["path"].path and ck.inputs["path"].widget == "file"
    assert ck.inputs["path"].default == "resources/models/loom-shapes"
    assert ck.inputs["dtype"].choices == ("auto", "fp32", "fp16", "bf16")
    for tid in ("conditioning.text_encode", "conditioning.negative_prompt"):
        spec = reg.get(tid)
        assert spec.inputs["clip"].type == "CLIP" and spec.inputs["text"].multiline
        assert spec.inputs["clip_skip"].default == 1
        assert [o.type for o in spec.outputs] == ["CONDITIONING"]
    assert reg.get("conditioning.sdxl").inputs["conditioning"].type == "CONDITIONING"


# ---- family detection -------------------------------------------------------------------------

torch = pytest.importorskip("torch")

from tests.helpers.original_layout import (  # noqa: E402
    clip_to_original,
    open_clip_to_original,
    pipeline_to_original,
    unet_to_original,
    vae_to_original,
)


def _meta_components(family: str):
    """The family's real-size components built on the meta device from Loom's shipped configs
    (no memory, no weights)."""
    import json

    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    d = CONFIGS / family
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(json.loads((d / "unet/config.json").read_text()))
        vae = AutoencoderKL.from_config(json.loads((d / "vae/config.json").read_text()))
        encoders = {}
        for sub in ("text_encoder", "text_encoder_2"):
            if (d / sub).is_dir():
                cfg = json.loads((d / sub / "config.json").read_text())
                cls = CLIPTextModelWithProjection \
                    if cfg["architectures"][0].endswith("Projection") else CLIPTextModel
                encoders[sub] = cls(CLIPTextConfig.from_dict(cfg))
    return unet, vae, encoders


def _original_state(family: str) -> dict:
    unet, vae, enc = _meta_components(family)
    sd = {**unet_to_original(unet), **vae_to_original(vae)}
    if family == "sdxl":
        sd.update(clip_to_original(enc["text_encoder"], "conditioner.embedders.0.transformer."))
        sd.update(open_clip_to_original(enc["text_encoder_2"], "conditioner.embedders.1.model."))
    elif family == "sdxl_refiner":
        sd.update(open_clip_to_original(enc["text_encoder_2"], "conditioner.embedders.0.model."))
    elif family in ("sd2", "sd2_base", "sd2_inpaint", "sd_x4_upscaler"):
        sd.update(open_clip_to_original(enc["text_encoder"], "cond_stage_model.model."))
    else:
        sd.update(clip_to_original(enc["text_encoder"], "cond_stage_model.transformer."))
    return sd


EXPECTED = {"sd1": "sd1", "sd2": "sd2", "sd2_base": "sd2", "sd_inpaint": "sd_inpaint",
            "sd2_inpaint": "sd2_inpaint", "sdxl": "sdxl", "sdxl_refiner": "sdxl_refiner",
            "sd_x4_upscaler": "sd_x4_upscaler"}


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_detect_family_real_sizes(config):
    """Real-size key names and shapes (from the shipped configs, on the meta device)."""
    from nodes.lib.families import detect_family

    sd = _original_state(config)
    det = detect_family({k: tuple(v.shape) for k, v in sd.items()})
    assert det.family == EXPECTED[config]
    assert det.in_channels == {"sd_inpaint": 9, "sd2_inpaint": 9, "sd_x4_upscaler": 7}.get(
        config, 4)
    if config == "sd_x4_upscaler":
        assert det.prediction_type == "v_prediction"


@pytest.mark.parametrize("config", sorted(EXPECTED))
def test_shipped_configs_fit_the_original_layout(config):
    """diffusers' single-file conversion of a real-layout state dict gives exactly the keys
    and shapes of the models built from resources/configs/<family>."""
    import json

    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    sd = _original_state(config)
    unet, vae, _ = _meta_components(config)
    d = CONFIGS / config
    conv = convert_ldm_unet_checkpoint(sd, json.loads((d / "unet/config.json").read_text()))
    assert {k: tuple(v.shape) for k, v in conv.items()} == \
        {k: tuple(v.shape) for k, v in unet.state_dict().items()}
    conv = convert_ldm_vae_checkpoint(sd, json.loads((d / "vae/config.json").read_text()))
    assert {k: tuple(v.shape) for k, v in conv.items()} == \
        {k: tuple(v.shape) for k, v in vae.state_dict().items()}


def test_detect_without_text_encoder_uses_context_dim():
    from nodes.lib.families import UNET_PREFIX, detect_family

    base = {UNET_PREFIX + "input_blocks.0.0.weight": (320, 4, 3, 3),
            UNET_PREFIX + "input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
            UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 768)}
    assert detect_family(base).family == "sd1"
    sd2 = dict(base)
    sd2[UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"] = (320, 1024)
    sd2[UNET_PREFIX + "input_blocks.1.1.proj_in.weight"] = (320, 320)
    assert detect_family(sd2).family == "sd2"
    xl = dict(base, **{UNET_PREFIX + "label_emb.0.0.weight": (1280, 2816)})
    assert detect_family(xl).family == "sdxl"
    ref = dict(base, **{UNET_PREFIX + "label_emb.0.0.weight": (1536, 2560)})
    assert detect_family(ref).family == "sdxl_refiner"


def test_detect_prediction_markers_and_sd2_heuristic():
    from nodes.lib.families import detect_family, tensor_for_prediction_check

    shapes = {k: tuple(v.shape) for k, v in _original_state("sd2").items()}
    assert detect_family(shapes).prediction_type is None  # unknown: the loader's default (v)
    assert detect_family({**shapes, "v_pred": ()}).prediction_type == "v_prediction"
    assert detect_family(shapes, {"modelspec.prediction_type": "epsilon"}).prediction_type == \
        "epsilon"
    assert detect_family(shapes, {"ss_v_parameterization": "True"}).prediction_type == \
        "v_prediction"
    key = tensor_for_prediction_check(shapes)
    assert key.endswith("output_blocks.11.1.transformer_blocks.0.norm1.bias")
    g = torch.Generator().manual_seed(0)
    wide = {key: torch.randn(320, generator=g) * 0.3}
    narrow = {key: torch.randn(320, generator=g) * 0.01}
    assert detect_family(shapes, None, wide).prediction_type == "v_prediction"
    assert detect_family(shapes, None, narrow).prediction_type == "epsilon"


def test_loom_family_metadata_names_the_family_and_may_name_the_prediction_type():
    from nodes.lib.families import UNET_PREFIX, detect_family

    shapes = {UNET_PREFIX + "input_blocks.0.0.weight": (64, 4, 3, 3)}
    own = {"loom_family": "loom_builtin"}
    det = detect_family(shapes, own)
    assert (det.family, det.prediction_type) == ("loom_builtin", "epsilon")
    det = detect_family(shapes, {**own, "modelspec.prediction_type": "v_prediction"})
    assert (det.family, det.prediction_type) == ("loom_builtin", "v_prediction")


def test_detect_rejects_other_files():
    from nodes.lib.families import UnknownCheckpointError, detect_family

    with pytest.raises(UnknownCheckpointError, match="diffusers folder"):
        detect_family({"down_blocks.0.resnets.0.conv1.weight": (4, 4, 3, 3)})
    with pytest.raises(UnknownCheckpointError, match="no Stable Diffusion UNet"):
        detect_family({"foo": (1,)})


# ---- loading tiny checkpoints -----------------------------------------------------------------


def _same_weights(a, b) -> None:
    def norm(m):
        return {k.removeprefix("text_model."): v for k, v in m.state_dict().items()
                if not k.endswith("position_ids")}
    sa, sb = norm(a), norm(b)
    assert set(sa) == set(sb)
    bad = [k for k in sa if not torch.equal(sa[k], sb[k].to(sa[k].dtype))]
    assert not bad, bad[:5]


def _encoders(pipe):
    return [e for e in (getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2",
                                                                       None)) if e is not None]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny SD1 and SDXL pipelines, each as a diffusers folder and an original-layout file."""
    from tests.helpers.original_layout import save_original
    from tests.helpers.tiny_models import make_sd_pipeline, make_sdxl_pipeline

    root = tmp_path_factory.mktemp("tiny")
    out = {}
    for name, pipe in (("sd1", make_sd_pipeline()), ("sdxl", make_sdxl_pipeline())):
        pipe.save_pretrained(root / name)
        out[name] = (pipe, root / name, save_original(pipe, root / f"{name}.safetensors"))
    return out


@pytest.mark.parametrize("name", ["sd1", "sdxl"])
def test_single_file_loads_the_same_weights(name, tiny):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager

    pipe, folder, file = tiny[name]
    loaded = load_checkpoint(file, config_dir=folder, models=ModelManager(), device="cpu")
    assert loaded.info.kind == "single_file" and loaded.model.family == name
    _same_weights(pipe.unet, loaded.model.unet)
    _same_weights(pipe.vae, loaded.vae.vae)
    assert len(loaded.clip.text_encoders) == len(_encoders(pipe))
    for a, b in zip(_encoders(pipe), loaded.clip.text_encoders):
        assert type(a) is type(b)
        _same_weights(a, b)
    assert [t.pad_token for t in loaded.clip.tokenizers] == \
        ["<|endoftext|>"] if name == "sd1" else ["<|endoftext|>", "!"]
    assert loaded.model.scheduler_config["_class_name"] == type(pipe.scheduler).__name__
    assert loaded.model.scheduler_config["beta_schedule"] == "scaled_linear"
    assert loaded.model.dtype == torch.float32 and loaded.model.device == torch.device("cpu")
    assert loaded.vae.scaling_factor == pipe.vae.config.scaling_factor
    assert loaded.clip.force_zeros_for_empty_prompt == (name == "sdxl")


def test_single_file_through_the_node(tiny):
    from engine.node import RunContext
    from nodes.loaders import LoadCheckpoint

    pipe, folder, file = tiny["sd1"]
    node = LoadCheckpoint()
    node.path, node.family, node.prediction, node.dtype, node.config = (
        str(file), "auto", "v_prediction", "fp32", str(folder))
    ctx = RunContext("n", "loaders.checkpoint", {"device": "cpu"}, lambda *a: None, lambda: False)
    model, clip, vae = node.run(ctx)
    assert model.prediction_type == "v_prediction"  # the override
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    _same_weights(pipe.unet, model.unet)
    assert ctx.ui["family"] == "sd1"


def test_ckpt_with_plain_tensors_loads(tiny, tmp_path):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager

    pipe, folder, _ = tiny["sd1"]
    ckpt = tmp_path / "sd1.ckpt"
    torch.save({"state_dict": pipeline_to_original(pipe), "global_step": 10}, str(ckpt))
    loaded = load_checkpoint(ckpt, config_dir=folder, models=ModelManager(), device="cpu")
    _same_weights(pipe.unet, loaded.model.unet)


class _Payload:
    """Unpickling this would write a marker file: the pickle-safety test's canary."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def test_pickle_payload_does_not_run(tiny, tmp_path):
    from nodes.lib.checkpoints import CheckpointError, load_checkpoint
    from nodes.lib.model_manager import ModelManager

    pipe, folder, _ = tiny["sd1"]
    marker = tmp_path / "pwned.txt"
    evil = tmp_path / "evil.ckpt"
    sd = pipeline_to_original(pipe)
    torch.save({"state_dict": sd, "payload": _Payload(str(marker))}, str(evil))
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="never runs code"):
        load_checkpoint(evil, config_dir=folder, models=ModelManager(), device="cpu")
    assert not marker.exists()

    from engine.errors import NodeInputError
    from engine.node import RunContext
    from nodes.loaders import LoadCheckpoint

    node = LoadCheckpoint()
    node.path, node.family, node.prediction, node.dtype, node.config = (
        str(evil), "auto", "auto", "auto", "")
    ctx = RunContext("n", "loaders.checkpoint", {"device": "cpu"}, lambda *a: None, lambda: False)
    with pytest.raises(NodeInputError, match="safetensors") as info:
        node.run(ctx)
    assert info.value.input == "path"
    assert not marker.exists()


def test_diffusers_folder_loads(tiny):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager

    for name in ("sd1", "sdxl"):
        pipe, folder, _ = tiny[name]
        loaded = load_checkpoint(folder, models=ModelManager(), device="cpu")
        assert loaded.info.kind == "folder" and loaded.model.family == name
        _same_weights(pipe.unet, loaded.model.unet)
        _same_weights(pipe.vae, loaded.vae.vae)
        for a, b in zip(_encoders(pipe), loaded.clip.text_encoders):
            _same_weights(a, b)
        ref = {k: v for k, v in pipe.scheduler.config.items() if not k.startswith("_")}
        got = loaded.model.scheduler_config
        assert {k: got.get(k) for k in ref} == {k: (list(v) if isinstance(v, tuple) else v)
                                                for k, v in ref.items()}
        assert got["_class_name"] == type(pipe.scheduler).__name__


def test_other_folder_families(tmp_path):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager
    from tests.helpers.tiny_models import (
        make_latent_upscaler_folder,
        make_sd_folder,
        make_sdxl_folder,
        make_x4_upscaler_folder,
    )

    cases = [
        (make_sd_folder(tmp_path / "sd2", family="sd2", prediction_type="v_prediction"),
         "sd2", "v_prediction"),
        (make_sd_folder(tmp_path / "inp", in_channels=9), "sd_inpaint", "epsilon"),
        (make_sdxl_folder(tmp_path / "ref", refiner=True), "sdxl_refiner", "epsilon"),
        (make_x4_upscaler_folder(tmp_path / "x4"), "sd_x4_upscaler", "v_prediction"),
        (make_latent_upscaler_folder(tmp_path / "lat"), "sd_latent_upscaler", "sample"),
    ]
    for folder, family, pred in cases:
        loaded = load_checkpoint(folder, models=ModelManager(), device="cpu")
        assert (loaded.model.family, loaded.model.prediction_type) == (family, pred), folder
    x4 = load_checkpoint(tmp_path / "x4", models=ModelManager(), device="cpu")
    assert x4.model.extra["low_res_scheduler"]["_class_name"] == "DDPMScheduler"
    assert x4.model.extra["max_noise_level"] == 350 and x4.vae.scaling_factor == 0.08333


def test_folder_with_only_pickled_weights_is_refused(tiny, tmp_path):
    import shutil

    from nodes.lib.checkpoints import CheckpointError, load_checkpoint
    from nodes.lib.model_manager import ModelManager

    _, folder, _ = tiny["sd1"]
    copy = tmp_path / "pickled"
    shutil.copytree(folder, copy)
    (copy / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (copy / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(CheckpointError, match="pickled"):
        load_checkpoint(copy, models=ModelManager(), device="cpu")


def test_missing_and_unknown_paths_are_input_errors(tmp_path):
    from engine.errors import NodeInputError
    from engine.node import RunContext
    from nodes.loaders import LoadCheckpoint

    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "empty_dir").mkdir()
    from safetensors.torch import save_file

    save_file({"foo": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    for value, pattern in (("does/not/exist.safetensors", "no file or folder"),
                           (str(tmp_path / "notes.txt"), "expected a .safetensors"),
                           (str(tmp_path / "empty_dir"), "model_index.json"),
                           (str(tmp_path / "other.safetensors"), "no Stable Diffusion UNet")):
        node = LoadCheckpoint()
        node.path, node.family, node.prediction, node.dtype, node.config = (
            value, "auto", "auto", "auto", "")
        ctx = RunContext("n", "t", {"device": "cpu", "base_dir": str(tmp_path)},
                         lambda *a: None, lambda: False)
        with pytest.raises(NodeInputError, match=pattern) as info:
            node.run(ctx)
        assert info.value.input == "path"


# ---- the model manager ------------------------------------------------------------------------


def test_cache_shares_components_between_loads(tiny):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager

    _, folder, file = tiny["sd1"]
    models = ModelManager(budget_bytes=2**34)
    a = load_checkpoint(file, config_dir=folder, models=models, device="cpu")
    b = load_checkpoint(file, config_dir=folder, models=models, device="cpu")
    assert a.model.unet is b.model.unet and a.vae.vae is b.vae.vae
    assert a.clip.text_encoders[0] is b.clip.text_encoders[0]
    assert models.loads == 3 and len(models) == 3
    c = load_checkpoint(file, config_dir=folder, models=models, device="cpu", dtype="bf16")
    assert c.model.unet is not a.model.unet and c.model.unet.dtype == torch.bfloat16
    assert models.loads == 6
    models.clear()
    assert len(models) == 0


def test_lru_eviction_under_budget(tiny):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager, module_nbytes

    _, folder, file = tiny["sd1"]
    _, xl_folder, xl_file = tiny["sdxl"]
    import gc
    import weakref

    models = ModelManager(budget_bytes=2**34)
    a = load_checkpoint(file, config_dir=folder, models=models, device="cpu")
    sd1_bytes = models.total_bytes
    assert sd1_bytes == module_nbytes(a.model.unet) + module_nbytes(a.vae.vae) + \
        module_nbytes(a.clip.text_encoders)
    first_unet = weakref.ref(a.model.unet)
    models.set_budget(sd1_bytes)  # room for exactly the SD1 components
    b = load_checkpoint(xl_file, config_dir=xl_folder, models=models, device="cpu")
    assert models.evictions >= 1
    assert models.total_bytes <= sd1_bytes or len(models) == 1
    keys = models.keys()
    assert all(k[0] == b.info.identity for k in keys[-1:])  # the newest entry stays
    assert not any(k[0] == a.info.identity and k[1].startswith("unet") for k in keys)
    # `a` (like a cached Load Checkpoint result) holds a handle, not the weights: the evicted
    # UNet is really gone
    gc.collect()
    assert first_unet() is None
    loads = models.loads
    again = load_checkpoint(file, config_dir=folder, models=models, device="cpu")
    assert models.loads > loads  # reloaded
    assert a.model.unet is again.model.unet  # the old handle borrows the reloaded weights


def test_manager_never_evicts_what_was_just_loaded():
    from nodes.lib.model_manager import ModelManager

    models = ModelManager(budget_bytes=10)
    big = torch.nn.Linear(100, 100)
    assert models.get("a", lambda: big) is big
    assert "a" in models  # alone and over budget: kept (the node needs it)
    small = torch.nn.Linear(2, 2)
    models.get("b", lambda: small)
    assert "a" not in models and "b" in models


def test_device_and_dtype_resolution(monkeypatch):
    from nodes.lib import checkpoints as ck

    cpu = torch.device("cpu")
    assert ck.resolve_dtype("auto", cpu) == torch.float32
    assert ck.resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert ck.resolve_dtype("bf16", cpu) == torch.bfloat16
    assert ck.resolve_dtype("fp16", cpu) == torch.float16
    with pytest.raises(ck.CheckpointError):
        ck.resolve_dtype("int8", cpu)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert ck.resolve_device("auto") == cpu
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert ck.resolve_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ck.resolve_device("auto") == torch.device("cuda")
    assert ck.resolve_device("cpu") == cpu


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_auto_is_fp16_and_encodes_like_diffusers(tiny):
    from nodes.lib.checkpoints import load_checkpoint
    from nodes.lib.model_manager import ModelManager
    from nodes.lib.prompts import encode_prompt

    pipe, folder, file = tiny["sdxl"]
    for path, cfg in ((folder, None), (file, folder)):
        models = ModelManager()
        loaded = load_checkpoint(path, config_dir=cfg, models=models, device="auto")
        assert loaded.model.device.type == "cuda" and loaded.model.dtype == torch.float16
        assert loaded.model.unet.dtype == torch.float16
        assert next(loaded.model.unet.parameters()).device.type == "cuda"
        assert loaded.vae.force_upcast  # SDXL's VAE decodes in fp32
        bf = load_checkpoint(path, config_dir=cfg, models=models, device="auto", dtype="bf16")
        assert bf.clip.text_encoders[0].dtype == torch.bfloat16
        ref = pipe.to("cuda", torch.float16)
        with torch.no_grad():
            r_pos, _, r_pooled, _ = ref.encode_prompt(
                "a photograph of an astronaut riding a horse", device="cuda",
                num_images_per_prompt=1, do_classifier_free_guidance=False)
        cond = encode_prompt(loaded.clip, "a photograph of an astronaut riding a horse")
        assert cond.embeds.device.type == "cuda" and cond.embeds.dtype == torch.float16
        assert torch.equal(cond.embeds, r_pos) and torch.equal(cond.pooled, r_pooled)
        pipe.to("cpu", torch.float32)
        models.clear()
