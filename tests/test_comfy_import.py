"""Opening ComfyUI workflows (engine.comfy): the UI and API formats and ComfyUI's PNGs become
Loom workflows; what does not map is listed and kept as placeholders.

The proof: ComfyUI files written by hand from the format (tests/comfyui/: txt2img, img2img,
inpaint with an inpainting model and with a noise mask, hires fix, SDXL base + refiner, LoRA,
the custom-sampling nodes, ControlNet) are imported and run on tiny random-weight models, and
give exactly the images of the equivalent Loom workflows written by hand here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from engine.comfy import ImportOptions, comfy_format, import_file, read_any
from engine.comfy.convert import _steps_and_strength
from engine.comfy.samplers import loom_scheduler
from engine.errors import WorkflowError
from engine.registry import default_registry
from engine.validate import problems
from engine.workflow import graph_from_document, load_workflow
from tests.support.png import png_bytes, text

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "comfyui"
PROMPT = "a red circle on a blue background"

pytest_plugins = ["tests.test_editor_support"]  # fixtures: make_window, isolated, ...


def imp(name: str, **options):
    return import_file(DATA / name, default_registry(), ImportOptions(**options))


def inputs(doc: dict, nid: str) -> dict:
    return doc["nodes"][nid]["inputs"]


def link(node: str, output: str) -> dict:
    return {"node": node, "output": output}


# the formats -----------------------------------------------------------------------------------


def test_txt2img_in_the_ui_format_becomes_loom_sampling_nodes() -> None:
    doc, report = imp("txt2img.json", comfy_root="/comfy")
    nodes = doc["nodes"]
    assert {n: e["type"] for n, e in nodes.items()} == {
        "checkpoint_4": "loaders.checkpoint", "prompt_6": "conditioning.text_encode",
        "prompt_7": "conditioning.text_encode", "unet_checkpoint_4": "sampling.unet_step",
        "cfg_3": "sampling.cfg_combine", "scheduler_3": "sampling.scheduler",
        "noise_3": "latents.noise", "sampler_3": "sampling.sampler",
        "decode_8": "latents.vae_decode", "save_9": "image.save"}
    assert inputs(doc, "checkpoint_4") == {"path": "/comfy/models/checkpoints/tiny_sd"}
    assert inputs(doc, "noise_3") == {"seed": 42, "width": 64, "height": 64, "batch": 1,
                                      "model": link("checkpoint_4", "model")}
    assert inputs(doc, "scheduler_3") == {"model": link("checkpoint_4", "model"),
                                          "name": "euler", "steps": 3, "strength": 1.0,
                                          "start": 0.0, "end": 1.0}
    assert inputs(doc, "cfg_3") == {"denoiser": link("unet_checkpoint_4", "denoiser"),
                                    "positive": link("prompt_6", "conditioning"),
                                    "negative": link("prompt_7", "conditioning"), "scale": 7.0}
    assert inputs(doc, "sampler_3") == {"denoiser": link("cfg_3", "denoiser"),
                                        "scheduler": link("scheduler_3", "scheduler"),
                                        "noise": link("noise_3", "noise")}
    assert inputs(doc, "save_9") == {"images": link("decode_8", "image"), "prefix": "txt2img"}
    # positions carry over: each ComfyUI node's Loom node where it was, helpers near it
    assert nodes["checkpoint_4"]["ui"]["pos"] == [26, 474]
    assert nodes["sampler_3"]["ui"]["pos"] == [863, 186]
    assert nodes["save_9"]["ui"]["pos"] == [1451, 189]
    assert doc["ui"]["groups"] == [{"title": "Prompts", "rect": [400, 110, 460, 480],
                                    "color": "#3f789e"}]
    assert report.not_mapped == [] and len(report.mapped) == 7
    assert doc["ui"]["comfy_import"] == {"format": "ui", "not_mapped": [], "notes": [],
                                        "source": "txt2img.json"}
    graph = graph_from_document(doc, default_registry())  # validates: raises on any problem
    assert len(graph.nodes) == 10


def _api_of_txt2img() -> dict:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "tiny_sd"}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "ugly", "clip": ["4", 1]}},
        "5": {"class_type": "EmptyLatentImage",
              "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "KSampler", "inputs": {
            "seed": 42, "steps": 3, "cfg": 7, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1, "model": ["4", 0], "positive": ["6", 0], "negative": ["7", 0],
            "latent_image": ["5", 0]}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage",
              "inputs": {"filename_prefix": "txt2img", "images": ["8", 0]}}}


def _without_ui(doc: dict) -> dict:
    return {n: {k: v for k, v in e.items() if k != "ui"} for n, e in doc["nodes"].items()}


def test_the_api_format_and_comfyui_pngs_give_the_same_graph(tmp_path) -> None:
    ui_doc, _ = imp("txt2img.json")
    api = _api_of_txt2img()
    assert comfy_format(api) == "api" and comfy_format(json.loads(
        (DATA / "txt2img.json").read_text())) == "ui"
    (tmp_path / "api.json").write_text(json.dumps(api))
    api_doc, report = read_any(tmp_path / "api.json", default_registry())
    assert report is not None and report.format == "api"
    assert _without_ui(api_doc) == _without_ui(ui_doc)
    # the API format has no positions: laid out in columns by data flow
    pos = {n: tuple(e["ui"]["pos"]) for n, e in api_doc["nodes"].items()}
    assert pos["checkpoint_4"][0] < pos["prompt_6"][0] < pos["cfg_3"][0] < pos["sampler_3"][0]
    assert len(set(pos.values())) == len(pos)
    # a ComfyUI PNG: the UI-format `workflow` chunk, else the API-format `prompt` chunk
    both = tmp_path / "ComfyUI_00001_.png"
    both.write_bytes(png_bytes([text("prompt", json.dumps(api)),
                                text("workflow", (DATA / "txt2img.json").read_text())]))
    doc, report = read_any(both, default_registry())
    assert report.format == "ui" and doc["nodes"]["sampler_3"]["ui"]["pos"] == [863, 186]
    only_prompt = tmp_path / "api_only.png"
    only_prompt.write_bytes(png_bytes([text("prompt", json.dumps(api))]))
    doc, report = read_any(only_prompt, default_registry())
    assert report.format == "api" and _without_ui(doc) == _without_ui(ui_doc)
    # a Loom workflow is read as it is; anything else is refused
    loom_doc, report = read_any(ROOT / "resources" / "workflows" / "default.json")
    assert report is None and loom_doc["schema_version"] == 1
    plain = tmp_path / "plain.png"
    plain.write_bytes(png_bytes([text("prompt", "a cat")]))
    with pytest.raises(WorkflowError, match="carries no Loom workflow"):
        read_any(plain)


def test_what_does_not_map_is_listed_and_kept_as_a_placeholder() -> None:
    doc, report = imp("odds_and_ends.json")
    nodes = doc["nodes"]
    assert [(c, t) for c, t, _ in report.not_mapped] == [
        ("4", "ConditioningSetArea"), ("10", "UpscaleModelLoader"),
        ("11", "ImageUpscaleWithModel")]
    area = nodes["comfy_4"]
    assert area["type"] == "comfyui.ConditioningSetArea" and "version" not in area
    # its values by name where the importer knows the widgets, and its links
    assert area["inputs"] == {"width": 256, "height": 512, "x": 64, "y": 0, "strength": 1.0,
                              "conditioning": link("prompt_2", "conditioning")}
    assert area["ui"]["comfy"] == {"id": "4", "type": "ConditioningSetArea",
                                   "reason": report.not_mapped[0][2],
                                   "widgets_values": [256, 512, 64, 0, 1.0]}
    assert area["ui"]["pos"] == [700, 0]
    assert "no areas" in report.not_mapped[0][2]
    assert nodes["comfy_10"]["ui"]["comfy"]["widgets_values"] == ["4x-UltraSharp.pth"]
    assert inputs(doc, "comfy_11") == {"upscale_model": link("comfy_10", "UPSCALE_MODEL"),
                                       "image": link("decode_9", "image")}
    # mapped nodes keep their links to placeholders
    assert inputs(doc, "cfg_7")["positive"] == link("comfy_4", "CONDITIONING")
    assert inputs(doc, "save_13")["images"] == link("comfy_11", "IMAGE")
    # Reroute followed, a bypassed node passed through, a muted one left out, the
    # PrimitiveNode's value in the input it fed, a Note kept as text, Windows separators
    assert inputs(doc, "unet_checkpoint_1")["model"] == link("checkpoint_1", "model")
    assert inputs(doc, "decode_9")["latent"] == link("sampler_7", "latent")
    assert not any(n.startswith("preview") for n in nodes)
    assert inputs(doc, "noise_7")["seed"] == 123
    assert inputs(doc, "checkpoint_1")["path"] == "sd15/v1-5-pruned-emaonly.safetensors"
    assert inputs(doc, "scheduler_7")["name"] == "dpmpp_2m_sde_karras"
    assert nodes["sampler_7"]["ui"]["color"] == "#223"
    assert doc["ui"]["comfy_notes"] == [{"id": "15", "text": "Use a 1.5 model here.",
                                         "pos": [0.0, 600.0]}]
    notes = "\n".join(report.notes)
    for words in ("node 8 (LatentUpscaleBy) is bypassed", "node 14 (PreviewImage) is muted",
                  "node 2 (CLIPTextEncode): the prompt has (word:weight) weights",
                  "imported as 'upscaled_%date_yyyy-MM-dd%'", "node 15 (Note)"):
        assert words in notes
    # validation names each placeholder, and nothing else
    reg = default_registry()
    found = problems(graph_from_document(doc, reg, check=False), reg)
    assert [(p.node_id, p.code) for p in found] == [
        ("comfy_4", "unknown_node_type"), ("comfy_10", "unknown_node_type"),
        ("comfy_11", "unknown_node_type")]
    assert "the ComfyUI node type 'ConditioningSetArea' has no Loom equivalent" in \
        found[0].message


def test_a_separate_vae_and_primitive_nodes() -> None:
    api = _api_of_txt2img()
    api["20"] = {"class_type": "VAELoader", "inputs": {"vae_name": "sdxl_vae.safetensors"}}
    api["21"] = {"class_type": "PrimitiveInt", "inputs": {"value": 77}}
    api["22"] = {"class_type": "PrimitiveString", "inputs": {"value": "a blue moon"}}
    api["8"]["inputs"]["vae"] = ["20", 0]
    api["3"]["inputs"]["seed"] = ["21", 0]
    api["6"]["inputs"]["text"] = ["22", 0]
    from engine.comfy import import_document

    doc, report = import_document(api, default_registry(), ImportOptions(comfy_root="/c"))
    assert report.not_mapped == []
    assert doc["nodes"]["vae_20"]["type"] == "loaders.vae"
    assert inputs(doc, "vae_20") == {"path": "/c/models/vae/sdxl_vae.safetensors"}
    assert inputs(doc, "decode_8")["vae"] == link("vae_20", "vae")
    # a primitive node's value goes through a link, as in ComfyUI
    assert inputs(doc, "value_21") == {"value": 77}
    assert inputs(doc, "noise_3")["seed"] == link("value_21", "value")
    assert inputs(doc, "prompt_6")["text"] == link("value_22", "value")
    graph_from_document(doc, default_registry())  # validates


def test_sampler_and_scheduler_names() -> None:
    choices = default_registry().get("sampling.scheduler").inputs["name"].choices
    exact = {("euler", "normal"): "euler", ("euler_ancestral", "normal"): "euler_ancestral",
             ("dpmpp_2m", "karras"): "dpmpp_2m_karras", ("dpmpp_2m", "normal"): "dpmpp_2m",
             ("dpmpp_2m_sde_gpu", "karras"): "dpmpp_2m_sde_karras",
             ("ddim", "ddim_uniform"): "ddim", ("uni_pc", "simple"): "unipc",
             ("lms", "normal"): "lms", ("heun", "sgm_uniform"): "heun", ("deis", "normal"): "deis",
             ("ddpm", "normal"): "ddpm"}
    for (sampler, schedule), name in exact.items():
        assert loom_scheduler(sampler, schedule, choices) == (name, []), (sampler, schedule)
    name, notes = loom_scheduler("euler", "karras", choices)
    assert name == "euler" and "no Karras-sigma variant of 'euler'" in notes[0]
    name, notes = loom_scheduler("dpmpp_sde", "karras", choices)
    assert name == "dpmpp_2m_sde_karras" and "DPM++ SDE (single-step) is not in Loom" in notes[0]
    name, notes = loom_scheduler("lcm", "beta", choices)
    assert name == "euler" and len(notes) == 2


def test_denoise_runs_the_same_steps_as_comfyui() -> None:
    """ComfyUI runs `steps` steps, the last of a schedule of int(steps / denoise); the
    Scheduler gets that total and a strength that runs exactly `steps` of it (diffusers'
    img2img rule: int(total * strength)), so it starts at the same step."""
    for steps in range(1, 61):
        for denoise in [i / 100 for i in range(5, 100)]:
            total, strength = _steps_and_strength(steps, denoise)
            assert total == int(steps / denoise)
            assert int(total * strength) == steps and 0 < strength <= 1, (steps, denoise)
    assert _steps_and_strength(3, 0.6) == (5, 0.6)
    assert _steps_and_strength(20, 0.7) == (28, 0.7143)


def test_ksampler_advanced_start_and_end_steps() -> None:
    doc, report = imp("sdxl_base_refiner.json")
    assert inputs(doc, "scheduler_8") | {"model": None} == {
        "model": None, "name": "euler", "steps": 5, "strength": 1.0, "start": 0.0, "end": 0.8}
    assert inputs(doc, "scheduler_9") | {"model": None} == {
        "model": None, "name": "euler", "steps": 5, "strength": 1.0, "start": 0.8, "end": 1.0}
    assert "noise" not in inputs(doc, "sampler_9")  # add_noise disable: continue the latent
    assert inputs(doc, "sampler_9")["init"] == link("sampler_8", "latent")
    assert inputs(doc, "decode_10")["vae"] == link("checkpoint_2", "vae")
    assert report.notes == []


def test_a_comfyui_file_given_to_run_says_how_to_import_it(tmp_path) -> None:
    with pytest.raises(WorkflowError, match="this is a ComfyUI workflow \\(ui format\\)"):
        load_workflow(DATA / "txt2img.json", default_registry())
    with pytest.raises(WorkflowError, match="import-comfy"):
        load_workflow(DATA / "lora_api.json", default_registry())


def test_import_comfy_on_the_command_line(tmp_path) -> None:
    out = tmp_path / "wf.json"
    env = dict(os.environ, PYTHONIOENCODING="utf-8", LOOM_USER_NODES=str(tmp_path / "none"))
    proc = subprocess.run([sys.executable, "main.py", "import-comfy",
                           str(DATA / "odds_and_ends.json"), "-o", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    lines = proc.stderr.splitlines()
    assert lines[0] == "ComfyUI workflow (ui format): 7 node(s) mapped, 3 not mapped"
    assert lines[1].startswith("not mapped: node 4 (ConditioningSetArea): Loom's conditioning "
                               "has no areas")
    assert lines[1].endswith("-- kept as placeholder 'comfy_4'")
    assert not any(line.startswith("warning:") for line in lines)
    doc = json.loads(out.read_text())
    assert doc["nodes"]["comfy_10"]["type"] == "comfyui.UpscaleModelLoader"
    proc = subprocess.run([sys.executable, "main.py", "run", str(DATA / "txt2img.json")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "import-comfy" in proc.stderr


@pytest.fixture
def registry():
    """The editor windows of this module (make_window) know Loom's own node types."""
    return default_registry()


def test_the_editor_opens_comfyui_workflows(make_window) -> None:
    w = make_window()
    assert w.load_file(DATA / "odds_and_ends.json")
    assert w.doc.path is None  # Save asks where: the ComfyUI file is never overwritten
    assert "comfy_4" in w.doc.graph.nodes and "sampler_7" in w.doc.graph.nodes
    assert w.node_item("sampler_7").pos().x() == 1000
    texts = [w.plugins.list.item(i).text() for i in range(w.plugins.list.count())]
    assert "Imported from ComfyUI (odds_and_ends.json, ui format): 3 nodes not mapped" in texts
    assert any(t.startswith("▲  node 10 (UpscaleModelLoader)") for t in texts)


# the proof: same images as the equivalent Loom workflows --------------------------------------


@pytest.fixture(scope="module")
def comfy_root(tmp_path_factory):
    """A ComfyUI folder: tiny models under models/, images under input/."""
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    import numpy as np
    import torch
    from PIL import Image

    from tests import lora_fixtures as lx
    from tests import sampling_fixtures as fx

    root = tmp_path_factory.mktemp("ComfyUI")
    ckpts = root / "models" / "checkpoints"
    ckpts.mkdir(parents=True)
    fx.build_sd(ckpts / "tiny_sd")
    fx.build_sd(ckpts / "tiny_sd_inpainting", in_channels=9, inpaint=True)
    fx.build_sdxl(ckpts / "tiny_sdxl")
    fx.build_sdxl(ckpts / "tiny_sdxl_refiner", refiner=True)
    # a LoRA for the tiny SD model (kohya layout), and a ControlNet made from its UNet
    from diffusers import ControlNetModel, UNet2DConditionModel
    from transformers import CLIPTextModel

    unet = UNet2DConditionModel.from_pretrained(ckpts / "tiny_sd" / "unet")
    te = CLIPTextModel.from_pretrained(ckpts / "tiny_sd" / "text_encoder")
    (root / "models" / "loras").mkdir()
    lx.write_kohya(root / "models" / "loras" / "tiny_lora.safetensors",
                   lx.random_layers(unet, lx.ATTENTION, seed=1),
                   {"lora_te": lx.random_layers(te, lx.TE_ALL, seed=2)})
    net = ControlNetModel.from_unet(unet)
    gen = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.startswith(("controlnet_down_blocks", "controlnet_mid_block")):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    net.save_pretrained(root / "models" / "controlnet" / "tiny_controlnet")
    inp = root / "input"
    inp.mkdir()
    rs = np.random.RandomState(0)
    photo = (rs.rand(64, 64, 3) * 255).astype(np.uint8)
    photo[16:48, 16:48] = (220, 40, 40)
    Image.fromarray(photo).save(inp / "photo.png")
    alpha = np.full((64, 64), 255, np.uint8)
    alpha[8:40, 24:56] = 0  # transparent = repaint (ComfyUI's LoadImage mask: 1 - alpha)
    Image.fromarray(np.dstack([photo, alpha]), "RGBA").save(inp / "photo_alpha.png")
    mask = np.zeros((64, 64, 3), np.uint8)
    mask[8:40, 24:56, 0] = 255
    Image.fromarray(mask).save(inp / "mask.png")
    control = np.zeros((64, 64, 3), np.uint8)
    control[20:44, 10:54] = 255
    Image.fromarray(control).save(inp / "control.png")
    return root


def run(doc: dict, tmp_path: Path, decode: str, name: str):
    """Run a Loom document (written to a file first) in a fresh session; the decoded image."""
    from engine.api import Session
    from tests import sampling_fixtures as fx

    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc, indent=1))
    session = Session(fx.registry())
    graph = session.load(path)
    result = session.run(graph, [decode], output_dir=tmp_path / f"out_{name}", device="cpu")
    assert result.ok, {k: (e.message, e.traceback) for k, e in result.errors.items()}
    return result.output(decode, "image")


def imported(name: str, root: Path, **options):
    doc, report = import_file(DATA / name, default_registry(),
                              ImportOptions(comfy_root=str(root), **options))
    return doc, report


def loom(**nodes) -> dict:
    """A hand-written Loom workflow: {id: (type, inputs)}."""
    return {"schema_version": 1, "nodes": {nid: {"type": t, "inputs": i}
                                           for nid, (t, i) in nodes.items()}}


def same(a, b, what: str) -> None:
    import torch

    assert a.shape == b.shape, what
    diff = (a.float() - b.float()).abs().max().item()
    print(f"[comfy import] {what}: max abs difference {diff:.3g}")
    assert torch.equal(a, b), f"{what}: images differ by {diff}"
    assert a.float().std() > 0.01  # a picture, not a constant


def sd_base(root: Path, ckpt: str = "tiny_sd", prompt: str = PROMPT, negative: str = "ugly",
            clip: dict | None = None, clip_skip: int = 1) -> dict:
    path = str(root / "models" / "checkpoints" / ckpt)
    clip = clip or link("ckpt", "clip")
    return {
        "ckpt": ("loaders.checkpoint", {"path": path}),
        "pos": ("conditioning.text_encode", {"clip": clip, "text": prompt,
                                             "clip_skip": clip_skip}),
        "neg": ("conditioning.text_encode", {"clip": clip, "text": negative,
                                             "clip_skip": clip_skip}),
    }


def sampling(model: dict, denoiser: dict, *, seed: int, size: int, steps: int, scale: float,
             name: str, strength: float = 1.0, batch: int = 1, suffix: str = "") -> dict:
    return {
        f"cfg{suffix}": ("sampling.cfg_combine", {"denoiser": denoiser,
                                                  "positive": link("pos", "conditioning"),
                                                  "negative": link("neg", "conditioning"),
                                                  "scale": scale}),
        f"sched{suffix}": ("sampling.scheduler", {"model": model, "name": name, "steps": steps,
                                                  "strength": strength}),
        f"noise{suffix}": ("latents.noise", {"seed": seed, "width": size, "height": size,
                                             "batch": batch, "model": model}),
    }


def sampler(suffix: str = "", **extra) -> tuple:
    return ("sampling.sampler", {"denoiser": link(f"cfg{suffix}", "denoiser"),
                                 "scheduler": link(f"sched{suffix}", "scheduler"),
                                 "noise": link(f"noise{suffix}", "noise"), **extra})


@pytest.fixture(scope="module", autouse=False)
def threads():
    torch = pytest.importorskip("torch")
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def txt2img_loom(root: Path) -> dict:
    model = link("ckpt", "model")
    return loom(**sd_base(root), unet=("sampling.unet_step", {"model": model}),
                **sampling(model, link("unet", "denoiser"), seed=42, size=64, steps=3, scale=7.0,
                           name="euler"),
                sampler=sampler(),
                decode=("latents.vae_decode", {"vae": link("ckpt", "vae"),
                                               "latent": link("sampler", "latent")}))


def test_txt2img_and_the_custom_sampling_nodes_give_the_loom_workflows_image(
        comfy_root, tmp_path, threads) -> None:
    ref = run(txt2img_loom(comfy_root), tmp_path, "decode", "loom")
    doc, _ = imported("txt2img.json", comfy_root)
    same(run(doc, tmp_path, "decode_8", "comfy"), ref, "txt2img (UI format)")
    doc, report = imported("custom_sampling_api.json", comfy_root)
    assert report.not_mapped == []
    same(run(doc, tmp_path, "decode_8", "custom_adv"), ref,
         "SamplerCustomAdvanced + RandomNoise + CFGGuider + KSamplerSelect + BasicScheduler")
    same(run(doc, tmp_path, "decode_31", "custom"), ref, "SamplerCustom")


def test_img2img(comfy_root, tmp_path, threads) -> None:
    model = link("ckpt", "model")
    ref = run(loom(
        **sd_base(comfy_root, prompt="a yellow star"),
        image=("image.load", {"image": str(comfy_root / "input" / "photo.png")}),
        encode=("latents.vae_encode", {"vae": link("ckpt", "vae"),
                                       "image": link("image", "image"), "mode": "mean"}),
        unet=("sampling.unet_step", {"model": model}),
        # ComfyUI's 3 steps at denoise 0.6 are the last 3 of a 5-step schedule
        **sampling(model, link("unet", "denoiser"), seed=7, size=64, steps=5, scale=6.5,
                   name="ddim", strength=0.6),
        sampler=sampler(init=link("encode", "latent")),
        decode=("latents.vae_decode", {"vae": link("ckpt", "vae"),
                                       "latent": link("sampler", "latent")})),
        tmp_path, "decode", "loom")
    doc, _ = imported("img2img_api.json", comfy_root)
    same(run(doc, tmp_path, "decode_7", "comfy"), ref, "img2img (API format, denoise 0.6)")


def test_inpaint_with_an_inpainting_model(comfy_root, tmp_path, threads) -> None:
    model = link("ckpt", "model")
    ref = run(loom(
        **sd_base(comfy_root, ckpt="tiny_sd_inpainting", prompt="a yellow star", negative=""),
        image=("image.load", {"image": str(comfy_root / "input" / "photo_alpha.png")}),
        inpaint=("inpaint.prepare", {"vae": link("ckpt", "vae"), "image": link("image", "image"),
                                     "mask": link("image", "mask"), "mode": "mean"}),
        unet=("sampling.unet_step", {"model": model}),
        **sampling(model, link("unet", "denoiser"), seed=5, size=64, steps=3, scale=7.5,
                   name="euler_ancestral"),
        sampler=sampler(image_cond=link("inpaint", "image_cond")),
        decode=("latents.vae_decode", {"vae": link("ckpt", "vae"),
                                       "latent": link("sampler", "latent")})),
        tmp_path, "decode", "loom")
    doc, report = imported("inpaint_model_api.json", comfy_root)
    assert any("taken for an inpainting model" in n for n in report.notes)
    same(run(doc, tmp_path, "decode_7", "comfy"), ref,
         "inpaint: VAEEncodeForInpaint with an inpainting model")


def test_inpaint_with_a_noise_mask(comfy_root, tmp_path, threads) -> None:
    model = link("ckpt", "model")
    ref = run(loom(
        **sd_base(comfy_root, prompt="a green square", negative="blurry"),
        image=("image.load", {"image": str(comfy_root / "input" / "photo.png")}),
        mask=("image.load_mask", {"image": str(comfy_root / "input" / "mask.png"),
                                  "channel": "red"}),
        encode=("latents.vae_encode", {"vae": link("ckpt", "vae"),
                                       "image": link("image", "image"), "mode": "mean"}),
        unet=("sampling.unet_step", {"model": model}),
        **sampling(model, link("unet", "denoiser"), seed=11, size=64, steps=5, scale=5.0,
                   name="euler", strength=0.8),
        sampler=sampler(init=link("encode", "latent"), mask=link("mask", "mask")),
        decode=("latents.vae_decode", {"vae": link("ckpt", "vae"),
                                       "latent": link("sampler", "latent")})),
        tmp_path, "decode", "loom")
    doc, _ = imported("inpaint_noise_mask.json", comfy_root)
    same(run(doc, tmp_path, "decode_9", "comfy"), ref,
         "inpaint: VAEEncode + SetLatentNoiseMask, denoise 0.8")


def test_hires_fix(comfy_root, tmp_path, threads) -> None:
    model, den = link("ckpt", "model"), link("unet", "denoiser")
    pos, neg = "a small purple triangle at the top left", "ugly"
    ref = run(loom(
        **sd_base(comfy_root, prompt=pos, negative=neg),
        unet=("sampling.unet_step", {"model": model}),
        **sampling(model, den, seed=42, size=64, steps=3, scale=7.0, name="euler"),
        sampler=sampler(),
        upscale=("upscale.latent_resize", {"latent": link("sampler", "latent"), "scale": 2.0,
                                           "method": "nearest-exact"}),
        # ComfyUI's 2 steps at denoise 0.5 (dpmpp_2m, karras): the last 2 of 4
        **sampling(model, den, seed=43, size=128, steps=4, scale=7.0, name="dpmpp_2m_karras",
                   strength=0.5, suffix="2"),
        sampler2=sampler("2", init=link("upscale", "latent")),
        decode=("latents.vae_decode", {"vae": link("ckpt", "vae"),
                                       "latent": link("sampler2", "latent")})),
        tmp_path, "decode", "loom")
    assert tuple(ref.shape) == (1, 3, 128, 128)
    doc, _ = imported("hires_fix.json", comfy_root)
    same(run(doc, tmp_path, "decode_8", "comfy"), ref,
         "hires fix: LatentUpscaleBy x2 + second KSampler at denoise 0.5")


def test_sdxl_base_and_refiner(comfy_root, tmp_path, threads) -> None:
    ck = comfy_root / "models" / "checkpoints"
    base, ref_model = link("base", "model"), link("refiner", "model")

    def enc(ckpt: str, text_: str) -> tuple:
        return ("conditioning.text_encode", {"clip": link(ckpt, "clip"), "text": text_})

    ref = run(loom(
        base=("loaders.checkpoint", {"path": str(ck / "tiny_sdxl")}),
        refiner=("loaders.checkpoint", {"path": str(ck / "tiny_sdxl_refiner")}),
        pos=enc("base", PROMPT), neg=enc("base", "ugly"),
        pos2=enc("refiner", PROMPT), neg2=enc("refiner", "ugly"),
        unet=("sampling.unet_step", {"model": base}),
        cfg=("sampling.cfg_combine", {"denoiser": link("unet", "denoiser"),
                                      "positive": link("pos", "conditioning"),
                                      "negative": link("neg", "conditioning"), "scale": 7.0}),
        sched=("sampling.scheduler", {"model": base, "name": "euler", "steps": 5, "end": 0.8}),
        noise=("latents.noise", {"seed": 42, "width": 64, "height": 64, "model": base}),
        sampler=sampler(),
        unet2=("sampling.unet_step", {"model": ref_model}),
        cfg2=("sampling.cfg_combine", {"denoiser": link("unet2", "denoiser"),
                                       "positive": link("pos2", "conditioning"),
                                       "negative": link("neg2", "conditioning"), "scale": 7.0}),
        sched2=("sampling.scheduler", {"model": ref_model, "name": "euler", "steps": 5,
                                       "start": 0.8}),
        sampler2=("sampling.sampler", {"denoiser": link("cfg2", "denoiser"),
                                       "scheduler": link("sched2", "scheduler"),
                                       "init": link("sampler", "latent")}),
        decode=("latents.vae_decode", {"vae": link("refiner", "vae"),
                                       "latent": link("sampler2", "latent")})),
        tmp_path, "decode", "loom")
    doc, _ = imported("sdxl_base_refiner.json", comfy_root)
    same(run(doc, tmp_path, "decode_10", "comfy"), ref,
         "SDXL base (KSamplerAdvanced steps 0-4 of 5) + refiner (4-5)")


def lora_loom(root: Path, strength_model: float, strength_clip: float) -> dict:
    model = link("lora", "model")
    lora_path = str(root / "models" / "loras" / "tiny_lora.safetensors")
    return loom(
        **sd_base(root, clip=link("lora", "clip"), clip_skip=2),
        lora=("loaders.lora", {"model": link("ckpt", "model"), "clip": link("ckpt", "clip"),
                               "path": lora_path, "strength_model": strength_model,
                               "strength_clip": strength_clip}),
        unet=("sampling.unet_step", {"model": model}),
        **sampling(model, link("unet", "denoiser"), seed=42, size=64, steps=3, scale=7.0,
                   name="dpmpp_2m", batch=2),
        sampler=sampler(),
        decode=("latents.vae_decode", {"vae": link("ckpt", "vae"),
                                       "latent": link("sampler", "latent")}))


def test_lora_and_clip_set_last_layer(comfy_root, tmp_path, threads) -> None:
    ref = run(lora_loom(comfy_root, 0.8, 0.6), tmp_path, "decode", "loom")
    doc, _ = imported("lora_api.json", comfy_root)
    assert inputs(doc, "prompt_6")["clip_skip"] == 2
    got = run(doc, tmp_path, "decode_8", "comfy")
    same(got, ref, "LoraLoader + CLIPSetLastLayer -2, batch 2")
    # the LoRA is applied, not dropped: at strength 0 the picture differs
    without = run(lora_loom(comfy_root, 0.0, 0.0), tmp_path, "decode", "no_lora")
    assert (without - got).abs().max() > 0.01


def test_controlnet(comfy_root, tmp_path, threads) -> None:
    model = link("ckpt", "model")
    ref = run(loom(
        **sd_base(comfy_root),
        net=("loaders.controlnet", {"path": str(comfy_root / "models" / "controlnet"
                                                / "tiny_controlnet")}),
        control=("image.load", {"image": str(comfy_root / "input" / "control.png")}),
        unet=("sampling.unet_step", {"model": model}),
        apply=("controlnet.apply", {"denoiser": link("unet", "denoiser"),
                                    "control_net": link("net", "control_net"),
                                    "image": link("control", "image"), "strength": 0.8}),
        **sampling(model, link("apply", "denoiser"), seed=42, size=64, steps=3, scale=7.0,
                   name="euler"),
        sampler=sampler(),
        decode=("latents.vae_decode", {"vae": link("ckpt", "vae"),
                                       "latent": link("sampler", "latent")})),
        tmp_path, "decode", "loom")
    doc, _ = imported("controlnet_api.json", comfy_root)
    got = run(doc, tmp_path, "decode_8", "comfy")
    same(got, ref, "ControlNetLoader + ControlNetApplyAdvanced")
    plain = run(txt2img_loom(comfy_root), tmp_path, "decode", "plain")
    assert (plain - got).abs().max() > 0.01  # the ControlNet steers the picture


def test_odd_files_are_refused_or_imported_never_crash() -> None:
    """Values of the wrong type anywhere in a ComfyUI file: the import either refuses the file
    (WorkflowError) or keeps the odd node as a placeholder; the result is always a Loom
    document the workflow reader accepts."""
    import copy
    import random

    rng = random.Random(0)
    junk = [None, -1, 0, 2**70, 1.5, float("inf"), "", "x", [], [1], ["1", 0], {}, {"a": 1},
            True]
    sources = [json.loads((DATA / f).read_text()) for f in sorted(os.listdir(DATA))]
    reg = default_registry()
    imported_ok = refused = 0

    def pick():
        return copy.deepcopy(rng.choice(junk))

    def mutate(value, depth=0):
        if isinstance(value, dict) and value and depth < 6:
            key = rng.choice(list(value))
            value[key] = mutate(value[key], depth + 1) if rng.random() < 0.7 else pick()
        elif isinstance(value, list) and value and depth < 6:
            i = rng.randrange(len(value))
            value[i] = mutate(value[i], depth + 1) if rng.random() < 0.7 else pick()
        else:
            return pick()
        return value

    for _i in range(400):
        doc = json.loads(json.dumps(rng.choice(sources)))
        for _ in range(rng.randint(1, 3)):
            doc = mutate(doc)
        if comfy_format(doc) is None:
            continue
        try:
            from engine.comfy import import_document

            out, _report = import_document(doc, reg)
        except WorkflowError:
            refused += 1
            continue
        graph_from_document(json.loads(json.dumps(out, allow_nan=True)), reg, check=False)
        problems(graph_from_document(out, reg, check=False), reg)
        imported_ok += 1
    assert imported_ok > 100 and refused > 0, (imported_ok, refused)
