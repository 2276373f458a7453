"""The model library (engine.library): folders per kind (a models folder, ComfyUI and A1111
installs, ComfyUI's extra_model_paths.yaml), names resolved in them, families read from file
headers, workflows that find their model files on another machine (by name, then by content),
the `models` command, the editor's model list, and Load VAE (equal to diffusers' pipeline with
`vae=` within 1e-4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from engine import library as lib
from engine.paths import not_found_message, resolve_path, where_looked

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """The user's data folder (settings) in the test's folder; no library from the machine."""
    monkeypatch.setenv("LOOM_DATA_DIR", str(tmp_path / "data"))
    for key in ("LOOM_MODELS_DIR", "LOOM_EXTRA_MODEL_PATHS", "LOOM_EMBEDDINGS_DIR"):
        monkeypatch.delenv(key, raising=False)
    return tmp_path


def write_st(path: Path, tensors: dict[str, tuple[int, ...]] | dict[str, np.ndarray],
             metadata: dict[str, str] | None = None, seed: int = 0) -> Path:
    """A .safetensors file (numpy; shapes become seeded random float16 arrays)."""
    from safetensors.numpy import save_file

    rs = np.random.RandomState(seed)
    arrays = {k: v if isinstance(v, np.ndarray) else rs.randn(*v).astype(np.float16)
              for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(arrays, str(path), metadata=metadata)
    return path


def touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---- folders and names --------------------------------------------------------------------------


def test_default_models_folder_is_in_the_user_data_folder(isolated):
    library = lib.build_library()
    assert library.folders("checkpoints") == [isolated / "data" / "models" / "checkpoints"]
    assert library.folders("upscale_models") == [isolated / "data" / "models" / "upscale_models"]
    assert set(library.roots) == set(lib.KINDS)


def test_listing_walks_subfolders_and_lists_diffusers_folders_as_one_model(isolated,
                                                                            monkeypatch):
    root = isolated / "models"
    monkeypatch.setenv("LOOM_MODELS_DIR", str(root))
    touch(root / "checkpoints" / "b.safetensors", b"12345")
    touch(root / "checkpoints" / "sd15" / "a.ckpt")
    touch(root / "checkpoints" / "notes.txt")
    touch(root / "checkpoints" / ".hidden" / "c.safetensors")
    touch(root / "checkpoints" / "pipe" / "model_index.json", b"{}")
    touch(root / "checkpoints" / "pipe" / "unet" / "diffusion_pytorch_model.safetensors", b"abc")
    touch(root / "loras" / "style.safetensors")
    entries = lib.current_library().entries("checkpoints")
    assert [(e.name, e.is_dir) for e in entries] == [
        ("b.safetensors", False), ("pipe", True), ("sd15/a.ckpt", False)]
    assert entries[0].size == 5 and entries[1].size == 5  # a folder: its files' bytes
    assert [e.name for e in lib.current_library().entries("loras")] == ["style.safetensors"]
    with pytest.raises(ValueError, match="unknown model kind"):
        lib.current_library().entries("hypernetworks")


def test_names_resolve_in_the_library_after_the_workflow_folder(isolated, monkeypatch):
    root, wf = isolated / "models", isolated / "wf"
    monkeypatch.setenv("LOOM_MODELS_DIR", str(root))
    in_lib = touch(root / "loras" / "styles" / "ink.safetensors")
    assert resolve_path("styles/ink.safetensors", {"base_dir": str(wf)}, "loras") == in_lib
    assert resolve_path("styles\\ink.safetensors", {}, "loras") == in_lib  # written on Windows
    # the workflow's own folder first; the library only for the input's kind
    beside = touch(wf / "styles" / "ink.safetensors")
    assert resolve_path("styles/ink.safetensors", {"base_dir": str(wf)}, "loras") == beside
    assert resolve_path("styles/ink.safetensors", {}, "checkpoints") != in_lib
    assert resolve_path("styles/ink.safetensors", {}) != in_lib  # no kind: as before
    # nothing there: the message lists every place looked at, the library folder included
    looked = where_looked("gone.safetensors", {"base_dir": str(wf)}, "loras")
    assert looked[:2] == [wf / "gone.safetensors", root / "loras" / "gone.safetensors"]
    msg = not_found_message("gone.safetensors", {"base_dir": str(wf)}, "loras")
    assert str(root / "loras" / "gone.safetensors") in msg and str(wf) in msg
    assert "main.py models" in msg
    # names never leave a library folder
    assert lib.current_library().candidates("loras", "../secret.safetensors") == []


def test_an_earlier_folder_hides_the_same_name_in_a_later_one(isolated, monkeypatch):
    a, b = isolated / "a", isolated / "b"
    monkeypatch.setenv("LOOM_MODELS_DIR", f"{a}{os.pathsep}{b}")
    first = touch(a / "vae" / "x.safetensors", b"1")
    touch(b / "vae" / "x.safetensors", b"22")
    only_b = touch(b / "vae" / "y.safetensors")
    entries = {e.name: e.path for e in lib.current_library().entries("vae")}
    assert entries == {"x.safetensors": first, "y.safetensors": only_b}
    assert resolve_path("x.safetensors", {}, "vae") == first


def test_settings_point_at_a1111_and_comfyui_installs(isolated):
    a1111, comfy = isolated / "webui", isolated / "ComfyUI"
    for sub in ("models/Stable-diffusion", "models/Lora", "embeddings", "models/ESRGAN"):
        (a1111 / sub).mkdir(parents=True)
    (comfy / "models" / "checkpoints").mkdir(parents=True)
    lib.write_settings({"models_dir": str(a1111), "comfyui": [str(comfy)]})
    library = lib.current_library()
    assert library.folders("checkpoints") == [a1111 / "models" / "Stable-diffusion",
                                              comfy / "models" / "checkpoints"]
    assert library.folders("loras") == [a1111 / "models" / "Lora", a1111 / "models" / "LyCORIS",
                                        comfy / "models" / "loras"]
    assert library.folders("embeddings")[0] == a1111 / "embeddings"
    assert library.folders("upscale_models")[:2] == [a1111 / "models" / "ESRGAN",
                                                     a1111 / "models" / "RealESRGAN"]
    assert lib.read_settings()["comfyui"] == [str(comfy)]
    # A1111's models/ folder itself is read as the install
    lib.write_settings({"models_dir": str(a1111 / "models"), "comfyui": None})
    assert lib.current_library().folders("vae") == [a1111 / "models" / "VAE"]


EXTRA_YAML = """
a111:
    base_path: ../webui/
    checkpoints: models/Stable-diffusion
    configs: models/Stable-diffusion
    vae: models/VAE
    loras: |
         models/Lora
         models/LyCORIS
    upscale_models: |
                  models/ESRGAN
                  models/RealESRGAN
    embeddings: embeddings
    hypernetworks: models/hypernetworks
    controlnet: models/ControlNet

other:
    base_path: /srv/models
    is_default: true
    checkpoints: /abs/checkpoints
    clip: clip/
"""


def test_extra_model_paths_yaml(isolated, monkeypatch):
    yml = touch(isolated / "ComfyUI" / "extra_model_paths.yaml", EXTRA_YAML.encode())
    found = lib.read_extra_model_paths(yml)
    webui = yml.parent / "../webui"
    assert found == [
        ("checkpoints", webui / "models/Stable-diffusion", "a111"),
        ("vae", webui / "models/VAE", "a111"),
        ("loras", webui / "models/Lora", "a111"),
        ("loras", webui / "models/LyCORIS", "a111"),
        ("upscale_models", webui / "models/ESRGAN", "a111"),
        ("upscale_models", webui / "models/RealESRGAN", "a111"),
        ("embeddings", webui / "embeddings", "a111"),
        ("controlnet", webui / "models/ControlNet", "a111"),
        ("checkpoints", Path("/abs/checkpoints"), "other"),
    ]
    monkeypatch.setenv("LOOM_EXTRA_MODEL_PATHS", str(yml))
    library = lib.current_library()
    assert library.folders("loras")[-2:] == [webui / "models/Lora", webui / "models/LyCORIS"]
    assert dict(library.roots["controlnet"])[webui / "models/ControlNet"] == f"{yml} [a111]"
    # a ComfyUI install named as the models folder brings its yaml along
    monkeypatch.delenv("LOOM_EXTRA_MODEL_PATHS")
    monkeypatch.setenv("LOOM_MODELS_DIR", str(yml.parent))
    assert lib.current_library().folders("vae") == [yml.parent / "models" / "vae",
                                                    webui / "models/VAE"]
    # a broken yaml is a warning, not a crash
    touch(yml, b"a111: [unclosed")
    library = lib.build_library()
    assert any("not valid YAML" in w for w in library.warnings)


# ---- families from headers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint_files(tmp_path_factory):
    """Tiny SD 1.x and SDXL checkpoints in the original single-file layout."""
    pytest.importorskip("diffusers")
    from tests.helpers.original_layout import save_original
    from tests.helpers.tiny_models import make_sd_pipeline, make_sdxl_pipeline

    d = tmp_path_factory.mktemp("ckpts")
    sd1 = save_original(make_sd_pipeline("sd1"), d / "sd1.safetensors")
    sdxl = save_original(make_sdxl_pipeline(), d / "sdxl.safetensors")
    return sd1, sdxl


def make_library(root: Path, checkpoint_files) -> Path:
    sd1, sdxl = checkpoint_files
    (root / "checkpoints" / "xl").mkdir(parents=True)
    shutil.copy(sd1, root / "checkpoints" / "dreamy-sd15.safetensors")
    shutil.copy(sdxl, root / "checkpoints" / "xl" / "base.safetensors")
    touch(root / "checkpoints" / "old.ckpt")
    write_st(root / "loras" / "xl-style.safetensors", {
        "lora_te2_text_model_encoder_layers_0_mlp_fc1.lora_down.weight": (4, 1280),
        "lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight": (4, 2048)})
    write_st(root / "loras" / "sd15-style.safetensors", {
        "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
            (4, 768)})
    write_st(root / "embeddings" / "bad-hands.safetensors", {"emb_params": (2, 768)})
    write_st(root / "embeddings" / "xl-neg.safetensors", {"clip_l": (1, 768), "clip_g": (1, 1280)})
    write_st(root / "controlnet" / "canny.safetensors", {
        "controlnet_cond_embedding.conv_in.weight": (16, 3, 3, 3),
        "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight": (320, 768)})
    write_st(root / "vae" / "sdxl_vae.safetensors", {
        "decoder.conv_in.weight": (8, 4, 3, 3),
        "encoder.down.0.block.0.conv1.weight": (8, 3, 3, 3)})
    write_st(root / "vae" / "ft-mse.safetensors", {
        "decoder.conv_in.weight": (8, 4, 3, 3),
        "encoder.down.0.block.0.conv1.weight": (8, 3, 3, 3)})
    write_st(root / "upscale_models" / "4x-esrgan.safetensors", {
        "conv_first.weight": (4, 3, 3, 3), "body.0.rdb1.conv1.weight": (4, 4, 3, 3)})
    touch(root / "upscale_models" / "old.pth")
    return root


def test_models_command_lists_files_with_their_families(isolated, checkpoint_files):
    root = make_library(isolated / "models", checkpoint_files)
    env = {**os.environ, "LOOM_MODELS_DIR": str(root), "LOOM_DATA_DIR": str(isolated / "d")}
    proc = subprocess.run([sys.executable, "main.py", "models", "--json"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    fam = {(kind, f["name"]): f["family"] for kind, part in data["kinds"].items()
           for f in part["files"]}
    assert fam == {
        ("checkpoints", "dreamy-sd15.safetensors"): "sd1",
        ("checkpoints", "old.ckpt"): "",  # pickled: not opened to list it
        ("checkpoints", "xl/base.safetensors"): "sdxl",
        ("loras", "sd15-style.safetensors"): "sd1",
        ("loras", "xl-style.safetensors"): "sdxl",
        ("embeddings", "bad-hands.safetensors"): "sd1",
        ("embeddings", "xl-neg.safetensors"): "sdxl",
        ("controlnet", "canny.safetensors"): "sd1",
        ("vae", "ft-mse.safetensors"): "sd1",
        ("vae", "sdxl_vae.safetensors"): "sdxl",
        ("upscale_models", "4x-esrgan.safetensors"): "esrgan",
        ("upscale_models", "old.pth"): "",
    }
    assert data["kinds"]["loras"]["folders"] == [
        {"folder": str(root / "loras"), "source": "models folder (LOOM_MODELS_DIR)",
         "exists": True}]
    text = subprocess.run([sys.executable, "main.py", "models", "--kind", "checkpoints"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert lines[0] == "checkpoints: 3 files"
    assert any("xl/base.safetensors" in ln and "SDXL base" in ln for ln in lines)
    assert any("dreamy-sd15.safetensors" in ln and "Stable Diffusion 1.x" in ln for ln in lines)
    assert "loras" not in text.stdout


def test_listing_reads_headers_only_and_loads_no_torch(isolated, checkpoint_files):
    root = make_library(isolated / "models", checkpoint_files)
    code = ("import sys, nodes; from engine.library import listing; d = listing(); "
            "print(d['kinds']['checkpoints']['files'][2]['family'], 'torch' in sys.modules)")
    env = {**os.environ, "LOOM_MODELS_DIR": str(root)}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["sdxl", "False"]


# ---- portability: two machines ------------------------------------------------------------------


def registry():
    from engine.registry import Registry

    return Registry().discover("nodes")


def one_loader_workflow(path: Path, value: str, node_type: str = "loaders.checkpoint") -> Path:
    doc = {"schema_version": 1, "nodes": {"ckpt": {"type": node_type,
                                                   "inputs": {"path": value}}}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def save_on_machine_a(isolated, monkeypatch, value_of) -> tuple[Path, dict]:
    from engine.workflow import load_workflow, read_document, save_workflow

    a = isolated / "machine-a" / "models"
    model = write_st(a / "checkpoints" / "sd15" / "dreamy.safetensors", {"w": (300_000, 8)},
                     seed=1)
    monkeypatch.setenv("LOOM_MODELS_DIR", str(a))
    src = one_loader_workflow(isolated / "machine-a" / "draft.json", value_of(model))
    graph = load_workflow(src, registry(), check=False)
    saved = isolated / "shared" / "workflow.json"
    saved.parent.mkdir(exist_ok=True)
    save_workflow(graph, saved)
    return model, read_document(saved)


def test_saving_records_name_size_and_content_hash(isolated, monkeypatch):
    model, doc = save_on_machine_a(isolated, monkeypatch, str)
    record = doc["nodes"]["ckpt"]["ui"]["library"]["path"]
    assert record == {"value": str(model), "kind": "checkpoints",
                      "name": "sd15/dreamy.safetensors", "size": model.stat().st_size,
                      "hash": lib.content_hash(model)}
    assert record["hash"].startswith("sample1:")
    # a relative path outside the library travels with the workflow: nothing recorded
    from engine.workflow import graph_to_document, load_workflow

    plain = one_loader_workflow(isolated / "p" / "wf.json", "resources/models/loom-shapes")
    assert "ui" not in graph_to_document(load_workflow(plain, registry()))["nodes"]["ckpt"]


def test_a_workflow_finds_its_model_by_name_on_another_machine(isolated, monkeypatch):
    from engine.api import Session

    model, _doc = save_on_machine_a(isolated, monkeypatch, str)  # an absolute path on A
    b = isolated / "machine-b" / "models"
    on_b = b / "checkpoints" / "sd15" / "dreamy.safetensors"
    on_b.parent.mkdir(parents=True)
    shutil.copy(model, on_b)
    shutil.rmtree(isolated / "machine-a")  # machine A's files are not on machine B
    monkeypatch.setenv("LOOM_MODELS_DIR", str(b))
    graph = Session(registry()).load(isolated / "shared" / "workflow.json", check=False)
    assert graph.nodes["ckpt"].values["path"] == "sd15/dreamy.safetensors"
    (note,) = graph.ui["_relinked"]
    assert (note.code, note.node_id, note.input) == ("relinked", "ckpt", "path")
    assert "same name" in note.message and str(b / "checkpoints") in note.message
    assert resolve_path("sd15/dreamy.safetensors", {}, "checkpoints") == on_b
    # moved into another subfolder: found by its file name
    moved = b / "checkpoints" / "other" / "dreamy.safetensors"
    moved.parent.mkdir()
    on_b.rename(moved)
    graph = Session(registry()).load(isolated / "shared" / "workflow.json", check=False)
    assert graph.nodes["ckpt"].values["path"] == "other/dreamy.safetensors"
    assert "same file name" in graph.ui["_relinked"][0].message


def test_a_renamed_model_is_found_by_content(isolated, monkeypatch):
    from engine.api import Session

    model, _doc = save_on_machine_a(isolated, monkeypatch, str)
    b = isolated / "machine-b" / "models" / "checkpoints"
    b.mkdir(parents=True)
    shutil.copy(model, b / "renamed.safetensors")
    # a decoy: same header and size, other weights (another fine-tune of the same model)
    write_st(b / "decoy.safetensors", {"w": (300_000, 8)}, seed=2)
    assert (b / "decoy.safetensors").stat().st_size == model.stat().st_size
    assert lib.content_hash(b / "decoy.safetensors") != lib.content_hash(model)
    shutil.rmtree(isolated / "machine-a")
    monkeypatch.setenv("LOOM_MODELS_DIR", str(b.parent))
    graph = Session(registry()).load(isolated / "shared" / "workflow.json", check=False)
    assert graph.nodes["ckpt"].values["path"] == "renamed.safetensors"
    (note,) = graph.ui["_relinked"]
    assert "same content" in note.message and "'ckpt'" in str(note)
    # saved again on B, the record follows the file as B has it
    from engine.workflow import graph_to_document

    rec = graph_to_document(graph)["nodes"]["ckpt"]["ui"]["library"]["path"]
    assert rec["name"] == "renamed.safetensors"
    assert rec["hash"] == lib.content_hash(b / "renamed.safetensors")


def test_a_model_found_nowhere_is_said_and_the_record_kept(isolated, monkeypatch):
    from engine.api import Session
    from engine.workflow import graph_to_document

    model, doc = save_on_machine_a(isolated, monkeypatch, str)
    shutil.rmtree(isolated / "machine-a")
    monkeypatch.setenv("LOOM_MODELS_DIR", str(isolated / "empty"))
    graph = Session(registry()).load(isolated / "shared" / "workflow.json", check=False)
    assert graph.nodes["ckpt"].values["path"] == str(model)
    (note,) = graph.ui["_relinked"]
    assert note.code == "file_not_found" and "sd15/dreamy.safetensors" in note.message
    # saving on this machine keeps what machine A recorded, for the next machine
    assert graph_to_document(graph)["nodes"]["ckpt"]["ui"] == doc["nodes"]["ckpt"]["ui"]


def test_library_names_travel_without_rewriting(isolated, monkeypatch):
    """A workflow that names its model by library name runs wherever the library has it."""
    from engine.api import Session

    b = isolated / "b"
    write_st(b / "vae" / "mse.safetensors", {"w": (4, 4)})
    monkeypatch.setenv("LOOM_MODELS_DIR", str(b))
    wf = one_loader_workflow(isolated / "wf" / "x.json", "mse.safetensors", "loaders.vae")
    graph = Session(registry()).load(wf, check=False)
    assert graph.nodes["ckpt"].values["path"] == "mse.safetensors"
    assert "_relinked" not in graph.ui


def test_content_hash_is_cheap_stable_and_tells_fine_tunes_apart(isolated):
    a = write_st(isolated / "a.safetensors", {"w": (1_000_000, 4)}, seed=1)  # 8 MB: sampled
    b = write_st(isolated / "b.safetensors", {"w": (1_000_000, 4)}, seed=2)
    copy = shutil.copy(a, isolated / "copy.safetensors")
    assert lib.content_hash(a) == lib.content_hash(copy) != lib.content_hash(b)
    small = touch(isolated / "small.pth", b"abc")
    assert lib.content_hash(small) != lib.content_hash(touch(isolated / "s2.pth", b"abd"))
    folder = isolated / "pipe"
    touch(folder / "model_index.json", b'{"_class_name": "StableDiffusionPipeline"}')
    touch(folder / "unet" / "w.safetensors", b"1234")
    other = shutil.copytree(folder, isolated / "pipe2")
    assert lib.content_hash(folder) == lib.content_hash(other)
    touch(other / "unet" / "w.safetensors", b"12345")
    assert lib.content_hash(folder) != lib.content_hash(other)


def test_a_missing_library_file_is_one_preflight_problem_listing_where_loom_looked(
        isolated, monkeypatch):
    from engine.api import Session
    from engine.errors import ValidationError

    monkeypatch.setenv("LOOM_MODELS_DIR", str(isolated / "models"))
    wf = one_loader_workflow(isolated / "wf" / "x.json", "nowhere.safetensors")
    sess = Session(registry())
    graph = sess.load(wf)
    with pytest.raises(ValidationError) as err:
        sess.executor.submit(graph, ["ckpt"], sess.options(graph, isolated / "out", "cpu"))
    problems = [p for p in err.value.problems if p.node_id == "ckpt"]
    assert [(p.code, p.input) for p in problems] == [("missing_file", "path")]
    assert str(isolated / "models" / "checkpoints" / "nowhere.safetensors") in \
        problems[0].message


# ---- the editor's model list --------------------------------------------------------------------


@pytest.fixture
def editor_window(qtbot, isolated, monkeypatch):
    from editor.window import MainWindow
    from engine.api import Session

    monkeypatch.setenv("LOOM_RECOVERY_DIR", str(isolated / "recovery"))
    monkeypatch.setenv("LOOM_SETTINGS_FILE", str(isolated / "settings.ini"))
    monkeypatch.setenv("LOOM_OUTPUT_DIR", str(isolated / "out"))
    w = MainWindow(session=Session(registry()), output_dir=isolated / "out")
    w.confirm_close = lambda: "discard"
    qtbot.addWidget(w)
    w.resize(1200, 800)
    w.show()
    return w


def test_editor_lists_library_files_with_families_and_filters(editor_window, isolated,
                                                              monkeypatch, checkpoint_files):
    from PySide6.QtCore import QPointF

    from editor.model_picker import LibraryField, ModelPicker

    root = make_library(isolated / "models", checkpoint_files)
    monkeypatch.setenv("LOOM_MODELS_DIR", str(root))
    picker = ModelPicker("checkpoints")
    picker.finish()
    assert picker.visible_names() == ["dreamy-sd15.safetensors", "old.ckpt",
                                      "xl/base.safetensors"]
    assert picker.family_of("xl/base.safetensors") == "SDXL base"
    assert picker.family_of("dreamy-sd15.safetensors") == "Stable Diffusion 1.x"
    picker.search.setText("xl")
    assert picker.visible_names() == ["xl/base.safetensors"]
    picker.search.setText("stable 1.x")  # every word, in the name or the family
    assert picker.visible_names() == ["dreamy-sd15.safetensors"]
    assert picker.chosen() == "dreamy-sd15.safetensors"
    picker.search.setText("nothing like this")
    assert picker.visible_names() == [] and picker.chosen() is None
    assert not picker.ok_button.isEnabled()
    # a path field of a model input opens it; choosing sets the value (one undo step)
    nid = editor_window.scene.add_node("loaders.checkpoint", QPointF(0, 0))
    field = editor_window.scene.node_items[nid].widgets["path"]
    assert isinstance(field, LibraryField)
    assert "library" in [z.name for z in field.zones(editor_window.scene.node_items[nid]
                                                      .boundingRect())]
    dlg = field.open_picker()
    dlg.finish()
    dlg.search.setText("base")
    dlg.accept()
    assert editor_window.doc.graph.nodes[nid].values["path"] == "xl/base.safetensors"
    editor_window.doc.undo.undo()
    assert editor_window.doc.graph.nodes[nid].values["path"] == "resources/models/loom-shapes"
    # the LoRA and VAE loaders list their own kinds
    vae_dlg = ModelPicker("vae")
    vae_dlg.finish()
    assert vae_dlg.visible_names() == ["ft-mse.safetensors", "sdxl_vae.safetensors"]
    assert vae_dlg.family_of("sdxl_vae.safetensors") == "SDXL VAE"
    # an empty library says where to put files; choosing a models folder saves it
    empty = ModelPicker("controlnet")
    assert "canny.safetensors" in empty.visible_names()
    empty.set_models_folder(str(isolated / "elsewhere"))
    monkeypatch.delenv("LOOM_MODELS_DIR")
    empty.reload()
    assert empty.visible_names() == [] and "No ControlNet files yet" in empty.where.text()
    assert lib.read_settings()["models_dir"] == str(isolated / "elsewhere")


def test_editor_opening_a_workflow_relinks_and_says_so(editor_window, isolated, monkeypatch):
    model, _doc = save_on_machine_a(isolated, monkeypatch, str)
    b = isolated / "machine-b" / "models"
    (b / "checkpoints").mkdir(parents=True)
    shutil.copy(model, b / "checkpoints" / "dreamy.safetensors")
    shutil.rmtree(isolated / "machine-a")
    monkeypatch.setenv("LOOM_MODELS_DIR", str(b))
    assert editor_window.load_file(isolated / "shared" / "workflow.json")
    assert editor_window.doc.graph.nodes["ckpt"].values["path"] == "dreamy.safetensors"
    assert "found elsewhere" in editor_window.status_label.text()
    editor_window.refresh_problems()
    assert any("dreamy.safetensors" in editor_window.problems.item(i).text()
               for i in range(editor_window.problems.count()))


# ---- Load VAE -----------------------------------------------------------------------------------


def test_vae_config_from_real_size_shapes_is_sds():
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL

    from nodes.lib.model_info import vae_config, vae_config_from_shapes
    from tools.original_layout import vae_to_original

    cfg = vae_config("sd1")
    with torch.device("meta"):
        vae = AutoencoderKL.from_config(cfg)
    shapes = {k: tuple(v.shape) for k, v in vae_to_original(vae).items()}
    derived = vae_config_from_shapes(shapes, vae_config("sdxl"))
    for key in ("block_out_channels", "layers_per_block", "latent_channels", "in_channels",
                "out_channels", "down_block_types", "up_block_types"):
        assert derived[key] == cfg[key], key
    bare = {k.removeprefix("first_stage_model."): s for k, s in shapes.items()}
    assert vae_config_from_shapes(bare, cfg)["block_out_channels"] == [128, 256, 512, 512]
    diffusers_keys = {k: tuple(v.shape) for k, v in vae.state_dict().items()}
    assert vae_config_from_shapes(diffusers_keys, cfg)["layers_per_block"] == 2


@pytest.fixture(scope="module")
def vae_setup(tmp_path_factory):
    """A tiny SD folder and a VAE of the same shape with other weights, saved as a diffusers
    folder, an original-layout single file (first_stage_model.) and a bare-key one."""
    torch = pytest.importorskip("torch")
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from tests import sampling_fixtures as fx
    from tools.original_layout import vae_to_original

    d = tmp_path_factory.mktemp("vae")
    sd_folder = fx.build_sd(d / "sd")
    torch.manual_seed(7)
    vae = AutoencoderKL.from_config(AutoencoderKL.load_config(sd_folder / "vae")).eval()
    models = d / "models"
    vae.save_pretrained(models / "vae" / "swapped")
    original = vae_to_original(vae)
    save_file(original, str(models / "vae" / "original.safetensors"))
    save_file({k.removeprefix("first_stage_model."): v for k, v in original.items()},
              str(models / "vae" / "bare.safetensors"))
    return sd_folder, vae, models


def test_load_vae_swaps_the_decode_as_diffusers_does(vae_setup, tmp_path, monkeypatch):
    torch = pytest.importorskip("torch")
    from diffusers import StableDiffusionPipeline

    from engine.api import Session
    from tests import sampling_fixtures as fx
    from tests.sampling_fixtures import (
        PROMPT,
        as_image,
        assert_close,
        generator,
        link,
        run_loom,
        txt2img_nodes,
        use_scheduler,
    )

    sd_folder, vae, models = vae_setup
    monkeypatch.setenv("LOOM_MODELS_DIR", str(models))
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        sess = fx.session()
        pipe = use_scheduler(StableDiffusionPipeline.from_pretrained(sd_folder, vae=vae), "ddim")
        ref = as_image(pipe(PROMPT, num_inference_steps=3, guidance_scale=7.0, height=64,
                            width=64, generator=generator(), output_type="np").images)
        plain = run_loom(sess, tmp_path / "plain", txt2img_nodes(sd_folder, "ddim"))
        assert (plain - ref).abs().max() > 1e-2  # the swap changes the picture
        config = str(models / "vae" / "swapped" / "config.json")
        for name, value, cfg in (("folder", "swapped", ""),
                                 ("original single file", "original.safetensors", config),
                                 ("bare keys", "bare.safetensors", config)):
            nodes = txt2img_nodes(sd_folder, "ddim")
            nodes["vae"] = {"type": "loaders.vae", "path": value, "config": cfg}
            nodes["decode"]["vae"] = link("vae", "vae")
            loom = run_loom(Session(fx.registry()), tmp_path / name.replace(" ", "_"), nodes)
            assert_close(loom, ref, f"Load VAE ({name})")
    finally:
        torch.set_num_threads(old)


def test_load_vae_errors_name_the_input(vae_setup, tmp_path, monkeypatch):
    pytest.importorskip("torch")
    from engine.api import Session
    from engine.errors import ValidationError
    from tests import sampling_fixtures as fx

    sd_folder, _vae, models = vae_setup
    monkeypatch.setenv("LOOM_MODELS_DIR", str(models))
    not_vae = write_st(models / "vae" / "lora.safetensors", {"lora_unet_x.lora_down.weight":
                                                             (4, 4)})
    sess = Session(fx.registry())
    for value, cfg, where, pattern in (
            ("lora.safetensors", "", "path", "no VAE weights"),
            ("swapped", str(models / "vae" / "swapped" / "config.json"), "config",
             "only for single files"),
            ("bare.safetensors", str(tmp_path / "none.json"), "config", "no file or folder")):
        wf = tmp_path / f"{where}.json"
        wf.write_text(json.dumps({"schema_version": 1, "nodes": {"vae": {
            "type": "loaders.vae", "inputs": {"path": value, "config": cfg}}}}))
        graph = sess.load(wf)
        with pytest.raises(ValidationError) as err:
            sess.executor.submit(graph, ["vae"], sess.options(graph, tmp_path / "out", "cpu"))
        (problem,) = err.value.problems
        assert problem.input == where and pattern in problem.message, problem
    not_vae.unlink()
    # a single file whose shapes Loom's SD config does not fit (tiny: 8 groups) needs config
    wf = tmp_path / "noconfig.json"
    wf.write_text(json.dumps({"schema_version": 1, "nodes": {"vae": {
        "type": "loaders.vae", "inputs": {"path": "bare.safetensors"}}}}))
    graph = sess.load(wf)
    result = sess.run(graph, ["vae"], output_dir=tmp_path / "out", device="cpu")
    assert not result.ok and result.errors["vae"].input == "path"


# ---- upscale models -----------------------------------------------------------------------------


def test_upscale_models_are_listed_but_not_loaded():
    """spandrel (the ESRGAN loader ComfyUI uses) cannot be imported with the CPU build of torch
    that Loom installs (README, "Model library"); so there is no Load Upscale Model node, and
    the upscale_models folder is listed for the day there is."""
    reg = registry()
    assert "loaders.upscale_model" not in reg
    assert "upscale_models" in lib.KINDS
