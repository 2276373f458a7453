"""Behaviour of the sampling, latent and image nodes: errors that name the node and input,
Save Image's files, progress events and cancellation between steps."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from engine.executor import Progress  # noqa: E402
from engine.workflow import png_text_chunks, read_document  # noqa: E402
from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import link  # noqa: E402


@pytest.fixture(scope="module")
def sess():
    return fx.session()


@pytest.fixture(scope="module")
def sd_folder(tmp_path_factory):
    torch.set_num_threads(1)
    return fx.build_sd(tmp_path_factory.mktemp("sd"))


@pytest.fixture()
def png(tmp_path) -> Path:
    from PIL import Image

    arr = np.zeros((16, 24, 4), np.uint8)
    arr[..., 0] = 200
    arr[..., 3] = 255
    arr[4:8, 4:12, 3] = 0  # a transparent hole
    path = tmp_path / "in.png"
    Image.fromarray(arr, "RGBA").save(path)
    return path


def graph_of(sess, tmp_path: Path, nodes: dict):
    return sess.load(fx.write_workflow(tmp_path / "wf.json", nodes))


def txt2img(folder: Path, steps: int = 4, scheduler: str = "ddim") -> dict:
    return fx.small_txt2img(folder, steps=steps, scheduler=scheduler)


# ---- Latent Noise ---------------------------------------------------------------------------


def test_noise_size_not_multiple_of_8_names_node_and_input(sess, tmp_path):
    from engine.errors import ValidationError

    g = graph_of(sess, tmp_path, {"noise": {"type": "latents.noise", "width": 60, "height": 64}})
    with pytest.raises(ValidationError) as info:  # found by its pre-run check: nothing runs
        sess.run(g, outputs=["noise"])
    (err,) = info.value.problems
    assert err.node_id == "noise" and err.node_type == "latents.noise"
    assert err.input == "width"
    assert "multiple of 8" in str(err) and "'noise'" in str(err) and "'width'" in str(err)


def test_noise_matches_diffusers_draw_and_continues_stream(sess, tmp_path):
    from diffusers.utils.torch_utils import randn_tensor

    g = graph_of(sess, tmp_path, {"noise": {"type": "latents.noise", "seed": 7, "width": 64,
                                            "height": 48, "batch": 2, "channels": 4}})
    out = sess.run(g, outputs=["noise"]).outputs["noise"]
    noise, stream = out["noise"], out["rng"]
    gen = torch.Generator("cpu").manual_seed(7)
    ref = randn_tensor((2, 4, 6, 8), generator=gen)
    assert torch.equal(noise.samples, ref)
    # the stream after the draw is an explicit value, on the NOISE value and the RNG output
    assert (stream.seed, stream.draws) == (7, 1) and noise.stream is stream
    follow = stream.generator()
    expected = torch.randn(3, generator=gen)
    assert torch.equal(torch.randn(3, generator=follow), expected)
    # handing it on never moves the stream itself: a second reader starts at the same place
    assert torch.equal(torch.randn(3, generator=stream.generator()), expected)


# ---- images ---------------------------------------------------------------------------------


def test_load_image_alpha_becomes_mask(sess, tmp_path, png):
    g = graph_of(sess, tmp_path, {"load": {"type": "image.load", "image": str(png)}})
    out = sess.run(g, outputs=["load"]).outputs["load"]
    image, mask = out["image"], out["mask"]
    assert image.shape == (1, 3, 16, 24) and abs(image[0, 0, 0, 0].item() - 200 / 255) < 1e-6
    assert mask.shape == (1, 1, 16, 24)
    assert mask[0, 0, 5, 5] == 1 and mask[0, 0, 0, 0] == 0 and mask.sum() == 4 * 8


def test_save_image_numbers_never_overwrites_and_embeds_workflow(tmp_path, png):
    out = tmp_path / "out"
    out.mkdir()
    (out / "shot_00001.png").write_bytes(b"keep me")
    nodes = {"load": {"type": "image.load", "image": str(png)},
             "save": {"type": "image.save", "images": link("load", "image"), "prefix": "shot"}}
    s1 = fx.session()
    g = graph_of(s1, tmp_path, nodes)
    files = s1.run(g, output_dir=out).files
    assert [Path(f).name for f in files] == ["shot_00002.png"]
    assert (out / "shot_00001.png").read_bytes() == b"keep me"
    files2 = fx.session().run(g, output_dir=out).files  # a fresh cache: a new file
    assert [Path(f).name for f in files2] == ["shot_00003.png"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    data = (out / "shot_00002.png").read_bytes()
    chunks = png_text_chunks(data)
    assert "prompt" not in chunks
    doc = json.loads(chunks["workflow"])
    assert doc["nodes"]["save"]["inputs"]["prefix"] == "shot"
    assert read_document(out / "shot_00002.png")["nodes"].keys() == {"load", "save"}
    from PIL import Image

    assert np.asarray(Image.open(out / "shot_00002.png"))[0, 0].tolist() == [200, 0, 0]


@pytest.mark.parametrize("prefix", ["../escape", "/tmp/escape", "sub/escape", "..", "a\\b", ""])
def test_save_image_prefix_cannot_escape(tmp_path, png, prefix):
    s = fx.session()
    nodes = {"load": {"type": "image.load", "image": str(png)},
             "save": {"type": "image.save", "images": link("load", "image"), "prefix": prefix}}
    from engine.errors import ValidationError

    # refused by Save Image's pre-run check, before anything runs
    with pytest.raises(ValidationError) as info:
        s.run(graph_of(s, tmp_path, nodes), output_dir=tmp_path / "out")
    assert [(p.node_id, p.input) for p in info.value.problems] == [("save", "prefix")]
    assert not list(tmp_path.rglob("*escape*.png"))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ---- sampler: progress and cancellation -----------------------------------------------------


def test_progress_every_step_with_preview(sess, sd_folder, tmp_path):
    events = []
    g = graph_of(sess, tmp_path, txt2img(sd_folder, steps=4))
    result = sess.run(g, on_event=events.append)
    assert result.ok, result.errors
    steps = [e for e in events if isinstance(e, Progress) and e.node_id == "sampler"]
    assert [(e.step, e.total) for e in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    for e in steps:
        assert isinstance(e.preview, np.ndarray) and e.preview.dtype == np.uint8
        assert e.preview.shape == (4, 4, 3)
    images = result.ui["preview"]["images"]
    assert images[0].shape == (32, 32, 3) and images[0].dtype == np.uint8


def test_cancel_between_steps(sd_folder, tmp_path):
    s = fx.session()
    g = graph_of(s, tmp_path, txt2img(sd_folder, steps=5))
    ready = threading.Event()
    holder = {}
    seen = []

    def on_event(e):
        if isinstance(e, Progress) and e.node_id == "sampler":
            seen.append(e.step)
            ready.wait(10)
            holder["handle"].cancel()

    handle = s.executor.submit(g, options=s.options(g, tmp_path / "out"), on_event=on_event)
    holder["handle"] = handle
    ready.set()
    result = handle.result(60)
    assert result.cancelled
    assert result.status["sampler"] == "cancelled"
    assert seen == [1]  # stopped before the second step
    assert "decode" not in result.outputs


def test_sampler_refuses_unguided_denoiser(sess, sd_folder, tmp_path):
    """Guidance is part of the type system: a UNet Step wired straight into the Sampler is a
    validation error (the wire is refused when drawn), not a failure when the run gets there."""
    from engine.errors import ValidationError
    from engine.graph import GraphError

    nodes = txt2img(sd_folder)
    nodes["sampler"]["denoiser"] = link("unet", "denoiser")
    with pytest.raises(ValidationError) as info:
        graph_of(sess, tmp_path, nodes)
    (problem,) = info.value.problems
    assert (problem.code, problem.node_id, problem.input) == ("type_mismatch", "sampler",
                                                             "denoiser")
    assert "GUIDED_DENOISER" in problem.message and "'unet.denoiser'" in problem.message
    g = graph_of(sess, tmp_path, txt2img(sd_folder))
    assert "takes GUIDED_DENOISER" in g.can_connect("unet", "denoiser", "sampler", "denoiser")
    with pytest.raises(GraphError):
        g.connect("unet", "denoiser", "sampler", "denoiser")
    # and a guided denoiser cannot be guided twice
    assert g.can_connect("cfg", "denoiser", "cfg", "denoiser") is not None
    g.add_node("sampling.cfg_combine", "cfg2")
    assert "takes DENOISER" in g.can_connect("cfg", "denoiser", "cfg2", "denoiser")


def test_strength_below_1_needs_init(sess, sd_folder, tmp_path):
    nodes = txt2img(sd_folder)
    nodes["sched"]["strength"] = 0.5
    result = sess.run(graph_of(sess, tmp_path, nodes))
    assert result.errors["sampler"].input == "init"


def test_scheduler_names_all_build(sd_folder):
    import json as _json

    from nodes.lib.schedules import SCHEDULER_NAMES, SchedulerSpec, plan
    from nodes.sampling import SchedulerNode

    assert SchedulerNode.__loom_spec__.inputs["name"].choices == SCHEDULER_NAMES
    config = _json.loads((sd_folder / "scheduler" / "scheduler_config.json").read_text())
    for name in SCHEDULER_NAMES:
        p = plan(SchedulerSpec(name, config, 10), "cpu", has_init=False)
        assert len(p.timesteps) >= 10, name
        p = plan(SchedulerSpec(name, config, 10, strength=0.5), "cpu", has_init=True)
        assert 5 <= len(p.timesteps) <= 10 * p.scheduler.order, name


# ---- CFG Combine: guidance in a limited interval --------------------------------------------


def test_guidance_interval_guides_only_the_named_part_of_the_denoising(sess, sd_folder, tmp_path):
    """start/end: guidance on the steps whose progress (1 - t / 1000) lies in [start, end],
    the conditional prediction alone (one UNet row, not two) on the others."""
    from diffusers import UNet2DConditionModel

    rows: list[tuple[float, int]] = []
    original = UNet2DConditionModel.forward

    def counted(module, sample, timestep, *a, **k):
        rows.append((float(timestep), sample.shape[0]))
        return original(module, sample, timestep, *a, **k)

    def run(name: str, **cfg) -> torch.Tensor:
        nodes = txt2img(sd_folder, steps=4)
        nodes["cfg"].update({"scale": 5.0, **cfg})
        rows.clear()
        (tmp_path / name).mkdir()
        result = sess.run(graph_of(sess, tmp_path / name, nodes), outputs=["sampler"])
        assert result.ok, result.errors
        return result.output("sampler")

    UNet2DConditionModel.forward = counted
    try:
        full = run("full")
        assert [b for _, b in rows] == [2, 2, 2, 2]
        half = run("half", start=0.0, end=0.5)
        guided = [b == 2 for _, b in rows]
        assert guided == [1.0 - t / 1000 <= 0.5 for t, _ in rows]
        assert guided.count(True) == 2 and guided[0]   # the noisy first half, guided
        late = run("late", start=0.5, end=1.0)
        assert [b == 2 for _, b in rows] == [not g for g in guided]
        none = run("none", scale=1.0)
    finally:
        UNet2DConditionModel.forward = original
    # each choice gives its own picture; the first half guided is neither extreme
    for a, b in ((full, half), (half, none), (half, late), (full, late)):
        assert (a - b).abs().max() > 1e-4


def test_guidance_interval_backwards_names_the_input(sess, sd_folder, tmp_path):
    nodes = txt2img(sd_folder)
    nodes["cfg"].update(scale=5.0, start=0.8, end=0.2)
    result = sess.run(graph_of(sess, tmp_path, nodes))
    err = result.errors["cfg"]
    assert err.input == "start" and "0.8" in str(err) and "0.2" in str(err)
