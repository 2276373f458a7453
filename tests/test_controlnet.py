"""ControlNet: Loom graphs with Load ControlNet + Apply ControlNet give the numbers of diffusers'
StableDiffusionControlNetPipeline / StableDiffusionXLControlNetPipeline (tiny random models,
CPU, fp32, within 1e-4), one ControlNet or two at once, with partial start/end intervals and
guess mode; single files in the original layout load to the same weights; the cache re-runs
only what a changed strength touches; errors name the node and the input; the preprocessors
(canny, content shuffle) do what they say; the example workflow runs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
cv2 = pytest.importorskip("cv2")

from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import (  # noqa: E402
    PROMPT,
    SEED,
    as_image,
    assert_close,
    generator,
    link,
    reg,
)

ROOT = Path(__file__).resolve().parent.parent
SPREAD = 0.1  # std of the tiny ControlNets' (otherwise zero) output weights: a clear effect
# that strength still scales (much more saturates the tiny models' pictures)


one_torch_thread = fx.one_torch_thread  # fixtures shared with the other equality tests
sess = fx.sess


def tiny_controlnet(model_folder: Path, folder: Path, seed: int):
    """A ControlNet made from the model's UNet (ControlNetModel.from_unet), its zero-initialised
    output convolutions given random weights so that it changes the picture."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(model_folder / "unet")
    net = ControlNetModel.from_unet(unet)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                p.copy_(torch.randn(p.shape, generator=gen) * SPREAD)
            elif name.startswith("controlnet_cond_embedding") and p.ndim == 4:
                # variance-keeping weights: PyTorch's default lets the image fade out over
                # the embedding's 8 convolutions, leaving only their biases
                fan_in = p.shape[1] * p.shape[2] * p.shape[3]
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / fan_in) ** 0.5)
    net.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("cn_models")
    sd = fx.build_sd(root / "sd")
    sdxl = fx.build_sdxl(root / "sdxl")
    return {"sd": sd, "sdxl": sdxl,
            "sd_cn1": tiny_controlnet(sd, root / "sd_cn1", 1),
            "sd_cn2": tiny_controlnet(sd, root / "sd_cn2", 2),
            "sdxl_cn1": tiny_controlnet(sdxl, root / "sdxl_cn1", 3),
            "sdxl_cn2": tiny_controlnet(sdxl, root / "sdxl_cn2", 4)}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two 64x64 control images as PNG files: a picture with a square, and its canny edges."""
    from PIL import Image

    d = tmp_path_factory.mktemp("cn_img")
    rs = np.random.RandomState(0)
    arr = (rs.rand(64, 64, 3) * 80).astype(np.uint8)
    arr[16:48, 16:48] = (220, 40, 40)
    arr[24:40, 28:36] = (30, 200, 90)
    Image.fromarray(arr).save(d / "picture.png")
    edges = cv2.Canny(arr, 100, 200)
    Image.fromarray(np.stack([edges] * 3, axis=-1)).save(d / "edges.png")
    Image.fromarray(arr[:48]).save(d / "wide.png")  # 64 x 48
    return {"picture": d / "picture.png", "edges": d / "edges.png", "wide": d / "wide.png"}


def graph_nodes(folder: Path, family: str, controls: list[dict], negative: str = "",
                steps: int = 4, scale: float = 7.0, scheduler: str = "euler") -> dict:
    """txt2img with ControlNets: controls = [{"path", "image", "strength", "start", "end",
    ("guess_mode", "canny")}], applied in order (the first keeps the contract's node ids)."""
    nodes = fx.model_nodes(reg(), folder, family, PROMPT, negative)
    nodes.update({
        "unet": {"type": "sampling.unet_step", "model": link("ckpt", "model")},
        "noise": {"type": "latents.noise", "seed": SEED, "width": 64, "height": 64,
                  "batch": 1, "model": link("ckpt", "model")},
        "sched": {"type": "sampling.scheduler", "model": link("ckpt", "model"),
                  "name": scheduler, "steps": steps},
    })
    denoiser = link("unet", "denoiser")
    for i, c in enumerate(controls):
        sfx = "" if i == 0 else str(i + 1)
        nodes[f"controlnet_loader{sfx}"] = {"type": "loaders.controlnet", "path": str(c["path"])}
        nodes[f"control_image{sfx}"] = {"type": "image.load", "image": str(c["image"])}
        image = link(f"control_image{sfx}", "image")
        if c.get("canny"):
            nodes[f"canny{sfx}"] = {"type": "controlnet.canny", "image": image}
            image = link(f"canny{sfx}", "image")
        nodes[f"apply_controlnet{sfx}"] = {
            "type": "controlnet.apply", "denoiser": denoiser,
            "control_net": link(f"controlnet_loader{sfx}", "control_net"), "image": image,
            **{k: c[k] for k in ("strength", "start", "end", "guess_mode") if k in c}}
        denoiser = link(f"apply_controlnet{sfx}", "denoiser")
    nodes["cfg"] = {"type": "sampling.cfg_combine", "denoiser": denoiser,
                    "positive": fx.cond_link(nodes, "pos", reg()),
                    "negative": fx.cond_link(nodes, "neg", reg()), "scale": scale}
    nodes["sampler"] = {"type": "sampling.sampler", "denoiser": link("cfg", "denoiser"),
                        "scheduler": link("sched", "scheduler"), "noise": link("noise", "noise")}
    nodes["decode"] = {"type": "latents.vae_decode", "vae": link("ckpt", "vae"),
                       "latent": link("sampler", "latent")}
    return nodes


def load(sess, tmp_path: Path, nodes: dict):
    tmp_path.mkdir(parents=True, exist_ok=True)
    return sess.load(fx.write_workflow(tmp_path / "workflow.json", nodes))


def run_loom(sess, tmp_path: Path, nodes: dict) -> torch.Tensor:
    result = sess.run(load(sess, tmp_path, nodes), outputs=["decode"], device="cpu")
    assert result.ok, {k: (e.message, e.traceback) for k, e in result.errors.items()}
    return result.output("decode", "image")


def pipeline(kind: str, folder: Path, nets: list[Path], scheduler: str = "euler"):
    from diffusers import (
        ControlNetModel,
        StableDiffusionControlNetPipeline,
        StableDiffusionXLControlNetPipeline,
    )

    from nodes.lib.schedules import SchedulerSpec

    loaded = [ControlNetModel.from_pretrained(p) for p in nets]
    controlnet = loaded[0] if len(loaded) == 1 else loaded
    if kind == "sdxl":
        pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
            folder, controlnet=controlnet, add_watermarker=False)
    else:
        pipe = StableDiffusionControlNetPipeline.from_pretrained(
            folder, controlnet=controlnet, safety_checker=None, requires_safety_checker=False)
    pipe.scheduler = SchedulerSpec(scheduler, dict(pipe.scheduler.config), 1).build()
    pipe.set_progress_bar_config(disable=True)
    return pipe


# ---- equal to diffusers -----------------------------------------------------------------------


def test_sd_one_controlnet_equals_pipeline(sess, models, images, tmp_path):
    from PIL import Image

    nodes = graph_nodes(models["sd"], "sd1", [{"path": models["sd_cn1"],
                                                "image": images["picture"], "strength": 0.8}])
    loom = run_loom(sess, tmp_path / "a", nodes)
    pipe = pipeline("sd", models["sd"], [models["sd_cn1"]])
    ref = pipe(PROMPT, image=Image.open(images["picture"]), num_inference_steps=4,
               guidance_scale=7.0, controlnet_conditioning_scale=0.8, generator=generator(),
               output_type="np").images
    assert_close(loom, as_image(ref), "sd controlnet strength 0.8")
    # the ControlNet changes the picture (its residuals are not zero)
    off = graph_nodes(models["sd"], "sd1", [{"path": models["sd_cn1"],
                                             "image": images["picture"], "strength": 0.0}])
    plain = run_loom(sess, tmp_path / "b", off)
    assert (plain - loom).abs().max() > 0.05
    # and so does the control image
    other = graph_nodes(models["sd"], "sd1", [{"path": models["sd_cn1"],
                                               "image": images["edges"], "strength": 0.8}])
    assert (run_loom(sess, tmp_path / "c", other) - loom).abs().max() > 0.01


def test_sd_two_controlnets_partial_intervals_equal_pipeline(sess, models, images, tmp_path):
    """Two ControlNets at once (MultiControlNetModel): different strengths, images and parts
    of the schedule; the first gets its image through the Canny node."""
    from PIL import Image

    nodes = graph_nodes(models["sd"], "sd1", [
        {"path": models["sd_cn1"], "image": images["picture"], "canny": True, "strength": 0.7,
         "start": 0.0, "end": 0.6},
        {"path": models["sd_cn2"], "image": images["picture"], "strength": 1.3, "start": 0.25,
         "end": 1.0}], negative="blurry", steps=5, scheduler="dpmpp_2m")
    loom = run_loom(sess, tmp_path, nodes)
    pipe = pipeline("sd", models["sd"], [models["sd_cn1"], models["sd_cn2"]], "dpmpp_2m")
    ref = pipe(PROMPT, negative_prompt="blurry",
               image=[Image.open(images["edges"]), Image.open(images["picture"])],
               num_inference_steps=5, guidance_scale=7.0,
               controlnet_conditioning_scale=[0.7, 1.3], control_guidance_start=[0.0, 0.25],
               control_guidance_end=[0.6, 1.0], generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), "sd two controlnets, intervals [0, .6] and [.25, 1]")


def test_sd_guess_mode_equals_pipeline(sess, models, images, tmp_path):
    from PIL import Image

    nodes = graph_nodes(models["sd"], "sd1", [{"path": models["sd_cn1"],
                                                "image": images["edges"], "strength": 0.9,
                                                "guess_mode": True}])
    loom = run_loom(sess, tmp_path, nodes)
    pipe = pipeline("sd", models["sd"], [models["sd_cn1"]])
    ref = pipe(PROMPT, image=Image.open(images["edges"]), num_inference_steps=4,
               guidance_scale=7.0, controlnet_conditioning_scale=0.9, guess_mode=True,
               generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), "sd controlnet guess mode")


def test_sd_pooled_controlnet_with_content_shuffle_equals_pipeline(sess, models, images,
                                                                   tmp_path):
    """A ControlNet whose config pools its conditions (the shuffle model): guess mode is on
    whatever the input says, as in the pipeline; the image comes through Content Shuffle."""
    from diffusers import ControlNetModel

    from nodes.lib.annotators import content_shuffle
    from nodes.lib.images import open_image, pil_to_image

    folder = tmp_path / "pooled"
    net = ControlNetModel.from_pretrained(models["sd_cn2"])
    net.register_to_config(global_pool_conditions=True)
    net.save_pretrained(folder)
    nodes = graph_nodes(models["sd"], "sd1", [{"path": folder, "image": images["picture"],
                                                "strength": 1.5}])
    nodes["shuffle"] = {"type": "controlnet.shuffle", "image": link("control_image", "image"),
                        "seed": 3, "cell": 32}
    nodes["apply_controlnet"]["image"] = link("shuffle", "image")
    loom = run_loom(sess, tmp_path / "loom", nodes)
    shuffled = content_shuffle(pil_to_image(open_image(images["picture"])), 3, 32)
    pipe = pipeline("sd", models["sd"], [folder])
    ref = pipe(PROMPT, image=shuffled, num_inference_steps=4, guidance_scale=7.0,
               controlnet_conditioning_scale=1.5, generator=generator(),
               output_type="np").images
    assert_close(loom, as_image(ref), "sd pooled (shuffle) controlnet, content shuffle")


def test_sdxl_one_controlnet_equals_pipeline(sess, models, images, tmp_path):
    from PIL import Image

    nodes = graph_nodes(models["sdxl"], "sdxl", [{"path": models["sdxl_cn1"],
                                                  "image": images["picture"], "strength": 0.6,
                                                  "start": 0.0, "end": 0.5}], negative="ugly")
    loom = run_loom(sess, tmp_path, nodes)
    pipe = pipeline("sdxl", models["sdxl"], [models["sdxl_cn1"]])
    ref = pipe(PROMPT, negative_prompt="ugly", image=Image.open(images["picture"]),
               num_inference_steps=4, guidance_scale=7.0, controlnet_conditioning_scale=0.6,
               control_guidance_start=0.0, control_guidance_end=0.5, height=64, width=64,
               generator=generator(), output_type="np").images
    assert_close(loom, as_image(ref), "sdxl controlnet, first half")


def test_sdxl_two_controlnets_equal_pipeline(sess, models, images, tmp_path):
    from PIL import Image

    nodes = graph_nodes(models["sdxl"], "sdxl", [
        {"path": models["sdxl_cn1"], "image": images["edges"], "strength": 1.0},
        {"path": models["sdxl_cn2"], "image": images["picture"], "strength": 0.5,
         "start": 0.5, "end": 1.0}], negative="ugly")
    loom = run_loom(sess, tmp_path, nodes)
    pipe = pipeline("sdxl", models["sdxl"], [models["sdxl_cn1"], models["sdxl_cn2"]])
    ref = pipe(PROMPT, negative_prompt="ugly",
               image=[Image.open(images["edges"]), Image.open(images["picture"])],
               num_inference_steps=4, guidance_scale=7.0,
               controlnet_conditioning_scale=[1.0, 0.5], control_guidance_start=[0.0, 0.5],
               control_guidance_end=[1.0, 1.0], height=64, width=64, generator=generator(),
               output_type="np").images
    assert_close(loom, as_image(ref), "sdxl two controlnets")


# ---- when the ControlNet runs, and the cache ---------------------------------------------------


def test_controlnet_runs_only_on_its_steps(sess, models, images, tmp_path):
    """start/end 0.5..1 of 4 steps: the ControlNet is called on steps 2 and 3 only (the other
    steps' residuals would be times 0), one call of two CFG rows each."""
    from diffusers import ControlNetModel

    calls: list[int] = []
    original = ControlNetModel.forward

    def counted(module, sample, *a, **k):
        calls.append(sample.shape[0])
        return original(module, sample, *a, **k)

    nodes = graph_nodes(models["sd"], "sd1", [{"path": models["sd_cn1"],
                                                "image": images["picture"], "start": 0.5}])
    ControlNetModel.forward = counted
    try:
        run_loom(sess, tmp_path, nodes)
    finally:
        ControlNetModel.forward = original
    assert calls == [2, 2]


def test_changing_strength_reruns_only_what_depends_on_it(sess, models, images, tmp_path):
    from nodes.lib.model_manager import manager

    nodes = graph_nodes(models["sd"], "sd1", [{"path": models["sd_cn1"],
                                                "image": images["picture"], "canny": True,
                                                "strength": 1.0}])
    graph = load(sess, tmp_path, nodes)
    first = sess.run(graph, outputs=["decode"], device="cpu")
    assert first.ok, first.errors
    loads = manager().loads
    graph.set_value("apply_controlnet", "strength", 0.5)
    second = sess.run(graph, outputs=["decode"], device="cpu")
    assert second.ok, second.errors
    assert sorted(second.ran) == ["apply_controlnet", "cfg", "decode", "sampler"]
    assert {"controlnet_loader", "control_image", "canny", "ckpt", "unet", "pos", "neg",
            "noise", "sched"} <= set(second.cached)
    assert manager().loads == loads  # no model loaded again
    assert (second.output("decode", "image") - first.output("decode", "image")).abs().max() > 0.01
    graph.set_value("canny", "low", 50)
    third = sess.run(graph, outputs=["decode"], device="cpu")
    assert sorted(third.ran) == ["apply_controlnet", "canny", "cfg", "decode", "sampler"]


# ---- single files -----------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["", "control_model."])
def test_original_layout_single_file_loads_the_same_weights(models, tmp_path, prefix):
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from nodes.lib.controlnet import load_controlnet
    from nodes.lib.model_manager import ModelManager
    from tests.helpers.controlnet_layout import controlnet_to_original

    for name in ("sd_cn1", "sdxl_cn1"):
        ref = ControlNetModel.from_pretrained(models[name])
        path = tmp_path / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in controlnet_to_original(ref, prefix).items()},
                  str(path))
        bundle = load_controlnet(path, device="cpu", config=models[name],
                                 models=ModelManager(budget_bytes=2**30))
        assert bundle.family == ("sdxl" if name.startswith("sdxl") else "sd1")
        got = bundle.net.state_dict()
        want = ref.state_dict()
        assert set(got) == set(want)
        assert all(torch.equal(got[k], want[k]) for k in want), name
        # a .pth of the same tensors (torch.load with weights_only=True) loads the same
        pth = tmp_path / f"{name}.pth"
        torch.save(controlnet_to_original(ref, prefix), pth)
        again = load_controlnet(pth, device="cpu", config=models[name] / "config.json",
                                models=ModelManager(budget_bytes=2**30)).net.state_dict()
        assert all(torch.equal(again[k], want[k]) for k in want), name


def test_diffusers_layout_single_file_loads(models, tmp_path):
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from nodes.lib.controlnet import load_controlnet
    from nodes.lib.model_manager import ModelManager

    ref = ControlNetModel.from_pretrained(models["sd_cn2"])
    path = tmp_path / "cn.safetensors"
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(path))
    got = load_controlnet(path, device="cpu", config=models["sd_cn2"],
                          models=ModelManager(budget_bytes=2**30)).net.state_dict()
    assert all(torch.equal(got[k], v) for k, v in ref.state_dict().items())


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
@pytest.mark.parametrize("layout", ["", "control_model.", "diffusers"])
def test_real_size_single_file_config_is_derived(family, layout):
    """Real-size ControlNets (the family's UNet config, as ControlNetModel.from_unet builds
    them; on the meta device, no memory) in each single-file layout: the config Loom derives
    from the keys and shapes alone builds exactly the network, and the conversion gives
    exactly its keys and shapes (so e.g. control_v11p_sd15_canny loads without a config)."""
    from accelerate import init_empty_weights
    from diffusers import ControlNetModel, UNet2DConditionModel

    from nodes.lib.controlnet import single_file_config
    from nodes.lib.controlnet_files import family_from_shapes
    from tests.helpers.controlnet_layout import controlnet_to_original

    unet_cfg = json.loads((ROOT / "resources" / "configs" / family / "unet" /
                           "config.json").read_text())
    with init_empty_weights():
        net = ControlNetModel.from_unet(UNet2DConditionModel.from_config(unet_cfg),
                                        load_weights_from_unet=False)
    state = net.state_dict() if layout == "diffusers" else controlnet_to_original(net, layout)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    assert family_from_shapes(shapes) == family
    cfg = single_file_config(shapes, "x")
    for key, value in cfg.items():
        if key in net.config:
            want = net.config[key]
            assert (list(value) if isinstance(value, tuple) else value) == \
                (list(want) if isinstance(want, tuple) else want), key
    from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

    if layout != "diffusers":
        converted = convert_controlnet_checkpoint(state, cfg)
        for ldm, ours in (("label_emb.0.0", "add_embedding.linear_1"),
                          ("label_emb.0.2", "add_embedding.linear_2")):
            for part in ("weight", "bias"):
                if f"{layout}{ldm}.{part}" in state:
                    converted[f"{ours}.{part}"] = state[f"{layout}{ldm}.{part}"]
        assert {k: tuple(v.shape) for k, v in converted.items()} == \
            {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_single_file_of_unusual_shape_asks_for_a_config(models, tmp_path):
    """A tiny ControlNet as a single file without a config: Loom derives SD 1.x's real-size
    config, which the weights do not fit; the error says so and what to do."""
    from diffusers import ControlNetModel
    from safetensors.torch import save_file

    from nodes.lib.controlnet import load_controlnet
    from nodes.lib.model_files import CheckpointError
    from nodes.lib.model_manager import ModelManager
    from tests.helpers.controlnet_layout import controlnet_to_original

    ref = ControlNetModel.from_pretrained(models["sd_cn1"])
    path = tmp_path / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in controlnet_to_original(ref).items()}, str(path))
    with pytest.raises(CheckpointError) as info:
        load_controlnet(path, device="cpu", models=ModelManager(budget_bytes=2**30))
    assert "tiny.safetensors" in str(info.value) and "config" in str(info.value)


# ---- errors name the node and the input --------------------------------------------------------


def test_control_image_of_another_size_names_node_and_input(sess, models, images, tmp_path):
    nodes = graph_nodes(models["sd"], "sd1", [{"path": models["sd_cn1"],
                                                "image": images["wide"]}])
    result = sess.run(load(sess, tmp_path, nodes), outputs=["decode"], device="cpu")
    err = result.errors["sampler"]
    assert err.input == "denoiser"
    assert "Apply ControlNet 'apply_controlnet'" in err.message and "'image'" in err.message
    assert "64x48" in err.message and "64x64" in err.message and "Resize Image" in err.message


def test_controlnet_for_another_family_names_node_and_input(sess, models, images, tmp_path):
    nodes = graph_nodes(models["sd"], "sd1", [{"path": models["sdxl_cn1"],
                                                "image": images["picture"]}])
    result = sess.run(load(sess, tmp_path, nodes), outputs=["decode"], device="cpu")
    err = result.errors["apply_controlnet"]
    assert err.input == "control_net"
    assert "SDXL" in err.message and "Stable Diffusion 1.x" in err.message
    assert "sampler" not in result.errors  # skipped, not failed: the cause is named once


def test_backwards_interval_names_the_input(sess, models, images, tmp_path):
    nodes = graph_nodes(models["sd"], "sd1", [{"path": models["sd_cn1"],
                                                "image": images["picture"], "start": 0.7,
                                                "end": 0.3}])
    result = sess.run(load(sess, tmp_path, nodes), outputs=["decode"], device="cpu")
    err = result.errors["apply_controlnet"]
    assert err.input == "start" and "0.7" in err.message and "0.3" in err.message


def test_loader_preflight_names_bad_paths(sess, models, tmp_path):
    from engine.errors import ValidationError

    cases = {
        "missing": (str(tmp_path / "nothing.safetensors"), "no file or folder"),
        "checkpoint": (str(models["sd"]), "Load Checkpoint"),
        "text": (str(tmp_path / "notes.txt"), "not a weights file"),
    }
    (tmp_path / "notes.txt").write_text("hello")
    for name, (path, words) in cases.items():
        graph = load(sess, tmp_path / name, {"cn": {"type": "loaders.controlnet",
                                                    "path": path}})
        with pytest.raises(ValidationError) as info:
            sess.run(graph, outputs=["cn"], device="cpu")
        (problem,) = info.value.problems
        assert (problem.node_id, problem.input) == ("cn", "path"), name
        assert words in problem.message, (name, problem.message)
    # a folder has its own config: a config given with it is refused, not ignored
    graph = load(sess, tmp_path / "both", {"cn": {"type": "loaders.controlnet",
                                                  "path": str(models["sd_cn1"]),
                                                  "config": str(models["sd_cn1"])}})
    result = sess.run(graph, outputs=["cn"], device="cpu")
    assert result.errors["cn"].input == "config"


def test_a_pipeline_folder_with_a_controlnet_loads_its_controlnet(models, tmp_path):
    import shutil

    from nodes.lib.controlnet import load_controlnet
    from nodes.lib.model_manager import ModelManager

    folder = tmp_path / "pipe"
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "StableDiffusionControlNetPipeline",
         "controlnet": ["diffusers", "ControlNetModel"]}))
    shutil.copytree(models["sd_cn1"], folder / "controlnet")
    bundle = load_controlnet(folder, device="cpu", models=ModelManager(budget_bytes=2**30))
    assert bundle.source == str(folder / "controlnet") and bundle.family == "sd1"


# ---- preprocessors ----------------------------------------------------------------------------


def test_canny_is_opencv_canny_on_the_8_bit_image(sess, images, tmp_path):
    from PIL import Image

    nodes = {"img": {"type": "image.load", "image": str(images["picture"])},
             "canny": {"type": "controlnet.canny", "image": link("img", "image"), "low": 80,
                       "high": 160}}
    out = sess.run(load(sess, tmp_path, nodes), outputs=["canny"]).output("canny", "image")
    arr = np.asarray(Image.open(images["picture"]).convert("RGB"))
    want = cv2.Canny(arr, 80, 160).astype(np.float32) / 255.0
    assert out.shape == (1, 3, 64, 64) and out.dtype == torch.float32
    assert all(torch.equal(out[0, c], torch.from_numpy(want)) for c in range(3))
    assert set(out.unique().tolist()) == {0.0, 1.0}
    assert (out[0, 0, 14:18, 20:44].amax(dim=0) > 0).sum() >= 20  # the square's top edge
    assert out[0, 0, 20:23, 20:26].sum() == 0  # nothing inside the flat red square


def test_canny_thresholds_backwards_name_the_input(sess, images, tmp_path):
    nodes = {"img": {"type": "image.load", "image": str(images["picture"])},
             "canny": {"type": "controlnet.canny", "image": link("img", "image"), "low": 200,
                       "high": 100}}
    result = sess.run(load(sess, tmp_path, nodes), outputs=["canny"])
    assert result.errors["canny"].input == "low"


def test_content_shuffle_is_seeded_and_keeps_the_colours(sess, images, tmp_path):
    nodes = {"img": {"type": "image.load", "image": str(images["picture"])},
             "a": {"type": "controlnet.shuffle", "image": link("img", "image"), "seed": 1,
                   "cell": 32},
             "b": {"type": "controlnet.shuffle", "image": link("img", "image"), "seed": 1,
                   "cell": 32},
             "c": {"type": "controlnet.shuffle", "image": link("img", "image"), "seed": 2,
                   "cell": 32}}
    result = sess.run(load(sess, tmp_path, nodes), outputs=["a", "b", "c"])
    src = result.output("img", "image")
    a, b, c = (result.output(n, "image") for n in "abc")
    assert a.shape == src.shape
    assert torch.equal(a, b)  # same seed, same shuffle
    assert (a - c).abs().max() > 0.2  # another seed, another one
    assert (a - src).abs().mean() > 0.05  # the layout changed
    for ch in range(3):  # only the image's own colours (mixed by interpolation) are used
        assert src[0, ch].min() - 1e-6 <= a[0, ch].min() and a[0, ch].max() <= \
            src[0, ch].max() + 1e-6


# ---- the example workflow ---------------------------------------------------------------------


def test_example_workflow_contract_and_run(sess, models, images, tmp_path):
    """resources/workflows/examples/sd15_controlnet.json keeps the names scripts use, and runs
    once its paths point at models (here the tiny ones, 64x64, 2 steps)."""
    path = ROOT / "resources" / "workflows" / "examples" / "sd15_controlnet.json"
    doc = json.loads(path.read_text())
    n = doc["nodes"]
    assert n["controlnet_loader"]["type"] == "loaders.controlnet"
    assert "path" in n["controlnet_loader"]["inputs"]
    assert n["control_image"]["type"] == "image.load" and "image" in n["control_image"]["inputs"]
    assert n["apply_controlnet"]["type"] == "controlnet.apply"
    assert {"strength", "start", "end"} <= set(n["apply_controlnet"]["inputs"])
    txt2img = json.loads((path.parent / "sd15_txt2img.json").read_text())["nodes"]
    assert set(txt2img) <= set(n)
    graph = sess.load(path)
    for target, value in (("checkpoint.path", str(models["sd"])),
                          ("controlnet_loader.path", str(models["sd_cn1"])),
                          ("control_image.image", str(images["edges"])),
                          ("noise.width", 64), ("noise.height", 64), ("scheduler.steps", 2),
                          ("apply_controlnet.end", 0.5)):
        sess.set(graph, target, value)
    result = sess.run(graph, output_dir=tmp_path, device="cpu")
    assert result.ok, {k: e.message for k, e in result.errors.items()}
    assert len(result.files) == 1 and Path(result.files[0]).is_file()


# ---- on a CUDA machine ------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_two_controlnets_match_the_pipeline_and_fp16_stays_close(sess, models, images,
                                                                      tmp_path):
    """On the GPU in fp32 Loom gives the pipeline's picture (up to TF32/cuDNN rounding); in
    fp16 (the loaders' 'auto' on CUDA) the picture stays finite and close to fp32's."""
    from PIL import Image

    controls = [{"path": models["sd_cn1"], "image": images["picture"], "strength": 0.7,
                 "end": 0.6},
                {"path": models["sd_cn2"], "image": images["edges"], "strength": 1.2,
                 "start": 0.25}]

    def loom(dtype: str, name: str) -> torch.Tensor:
        nodes = graph_nodes(models["sd"], "sd1", controls)
        for n in nodes.values():
            if n["type"] in ("loaders.checkpoint", "loaders.controlnet"):
                n["dtype"] = dtype
        d = tmp_path / name
        result = sess.run(load(sess, d, nodes), outputs=["decode"], device="cuda")
        assert result.ok, {k: e.message for k, e in result.errors.items()}
        return result.output("decode", "image").float().cpu()

    fp32 = loom("fp32", "fp32")
    pipe = pipeline("sd", models["sd"], [models["sd_cn1"], models["sd_cn2"]]).to("cuda")
    ref = pipe(PROMPT, image=[Image.open(images["picture"]), Image.open(images["edges"])],
               num_inference_steps=4, guidance_scale=7.0, controlnet_conditioning_scale=[0.7, 1.2],
               control_guidance_start=[0.0, 0.25], control_guidance_end=[0.6, 1.0],
               generator=generator(), output_type="np").images
    diff = (fp32 - as_image(ref)).abs().max().item()
    print(f"[equality] cuda fp32 two controlnets: max abs diff {diff:.3g}")
    assert diff < 2e-3
    fp16 = loom("fp16", "fp16")
    assert torch.isfinite(fp16).all() and (fp16 - fp32).abs().max() < 0.05
