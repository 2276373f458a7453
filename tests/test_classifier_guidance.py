"""Classifier Guidance with a noise-aware classifier: the Loom graph equals a classifier-guided
DDIM loop written here with diffusers' scheduler (ε̂ = ε − s·√(1−ᾱ_t)·∇ log p(y | x_t)), scale
0 is exactly the unguided graph and a positive scale raises the classifier's log p of the label
on every scheduler, bad inputs are refused by name, the training script runs, resumes and
exports, and the shipped classifier (resources/models/loom-classifier) reads clean images of
its classes right."""

from __future__ import annotations

import copy
import json
import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from nodes.lib.schedules import SCHEDULER_NAMES  # noqa: E402
from tests import sampling_fixtures as fx  # noqa: E402
from tests.sampling_fixtures import link, node_errors, run_nodes, write_workflow  # noqa: E402
from tests.test_pixel_models import SIZE, build_pixel, pixel_nodes  # noqa: E402

one_torch_thread = fx.one_torch_thread
sess = fx.sess

NAMES = ["red circle", "blue square", "green triangle"]
LABEL = 1  # "blue square"


_run, _errors = run_nodes, node_errors


def tiny_classifier(seed: int = 0):
    from nodes.lib.noisy_models import EncoderConfig, NoisyClassifier

    torch.manual_seed(seed)
    net = NoisyClassifier(EncoderConfig(in_channels=3, block_out_channels=(8, 16),
                                        layers_per_block=1, out_dim=16, norm_num_groups=4),
                          NAMES).eval()
    with torch.no_grad():  # a random head is nearly uniform; sharper logits, larger gradients
        net.head.weight.mul_(20.0)
    return net


@pytest.fixture(scope="module")
def classifier_folder(tmp_path_factory):
    """A tiny random noise-aware classifier of 16 px pixel samples, saved in fp32 (so the
    reference loop can use the very same weights)."""
    from nodes.lib.noisy_models import Space, save_folder

    folder = tmp_path_factory.mktemp("cg_classifier") / "classifier"
    save_folder(tiny_classifier(), folder, Space("pixels", 3, SIZE), dtype=torch.float32)
    return folder


@pytest.fixture(scope="module")
def uncond_folder(tmp_path_factory):
    return build_pixel(tmp_path_factory.mktemp("cg_uncond"), pipeline="ddim")


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    # the test model's classes: NAMES and its null class last
    return build_pixel(tmp_path_factory.mktemp("cg_classes"), num_class_embeds=len(NAMES) + 1,
                       names=NAMES + ["null"], pipeline="ddim")


def guided(nodes, classifier_folder, scale, label=str(LABEL), **guide):
    nodes = copy.deepcopy(nodes)
    nodes["classifier"] = {"type": "loaders.noisy_model", "path": str(classifier_folder)}
    nodes["guide"] = {"type": "guidance.classifier", "denoiser": link("cfg", "denoiser"),
                      "classifier": link("classifier", "model"), "label": label,
                      "scale": scale, **guide}
    nodes["sampler"] = dict(nodes["sampler"], denoiser=link("guide", "denoiser"))
    return nodes


def log_p(classifier_folder, sample, label=LABEL) -> torch.Tensor:
    """The classifier's log p(label | x) of final samples, read at the schedule's least noisy
    level (timestep 0 of the test models' linear schedule)."""
    from diffusers import DDPMScheduler

    from nodes.lib.noisy_models import load_weights, log_sigma_of, read_folder

    net = load_weights(read_folder(classifier_folder))
    alpha0 = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod[0]
    with torch.no_grad():
        logits = net(sample.float(), log_sigma_of(alpha0).expand(sample.shape[0]))
    return torch.log_softmax(logits, dim=-1)[:, label]


# ---- (a) the graph equals a classifier-guided DDIM loop ----------------------------------------


@pytest.mark.parametrize("conditional", [False, True])
def test_equal_to_a_classifier_guided_ddim_loop(sess, classifier_folder, uncond_folder,
                                                class_folder, tmp_path, conditional):
    """Unconditional model + classifier (pure classifier guidance), and a class model with CFG
    3 + classifier: the same numbers as ε̂ = ε − s·√(1−ᾱ_t)·∇_x log p(y | x_t, log σ_t) fed to
    diffusers' DDIMScheduler, log σ_t from the scheduler's own alphas_cumprod."""
    from diffusers import DDIMScheduler, UNet2DModel
    from diffusers.utils.torch_utils import randn_tensor

    from nodes.lib.noisy_models import load_weights, read_folder

    steps, scale, cfg = 5, 30.0, 3.0
    folder = class_folder if conditional else uncond_folder
    base = pixel_nodes(folder, "ddim", steps=steps, label=NAMES[LABEL] if conditional else None,
                       scale=cfg if conditional else 1.0)
    loom = _run(sess, tmp_path, guided(base, classifier_folder, scale)).output("decode", "image")

    unet = UNet2DModel.from_pretrained(folder / "unet").eval()
    sched = DDIMScheduler.from_pretrained(folder / "scheduler")
    sched.set_timesteps(steps)
    net = load_weights(read_folder(classifier_folder))
    x = randn_tensor((2, 3, SIZE, SIZE), generator=fx.generator())
    null = len(NAMES)
    for t in sched.timesteps:
        with torch.no_grad():
            if conditional:
                labels = torch.tensor([null, null, LABEL, LABEL])
                uncond, cond = unet(torch.cat([x, x]), t, class_labels=labels).sample.chunk(2)
                eps = uncond + cfg * (cond - uncond)
            else:
                eps = unet(x, t).sample
        alpha = sched.alphas_cumprod[t]
        log_sigma = (0.5 * torch.log((1 - alpha) / alpha)).expand(x.shape[0])
        with torch.enable_grad():
            leaf = x.detach().requires_grad_(True)
            lp = torch.log_softmax(net(leaf, log_sigma), dim=-1)[:, LABEL]
            (grad,) = torch.autograd.grad(lp.sum(), leaf)
        eps = eps - scale * torch.sqrt(1 - alpha) * grad
        x = sched.step(eps, t, x, eta=0.0).prev_sample
    ref = (x / 2 + 0.5).clamp(0, 1)
    fx.assert_close(loom, ref, f"classifier guidance (conditional={conditional})")
    plain = _run(sess, tmp_path / "plain", base).output("decode", "image")
    assert (plain - loom).abs().max() > 1e-2  # the guidance did something


# ---- (b) every scheduler: 0 is the unguided graph, > 0 raises log p(label) ---------------------


@pytest.mark.parametrize("scheduler", SCHEDULER_NAMES)
def test_every_scheduler_scale_0_exact_and_scale_raises_log_p(sess, classifier_folder,
                                                              uncond_folder, tmp_path,
                                                              scheduler):
    base = pixel_nodes(uncond_folder, scheduler, steps=4, batch=2)
    plain = _run(sess, tmp_path / "plain", base)
    zero = _run(sess, tmp_path / "zero", guided(base, classifier_folder, 0.0))
    assert torch.equal(zero.output("decode", "image"), plain.output("decode", "image"))
    pulled = _run(sess, tmp_path / "guided", guided(base, classifier_folder, 30.0))
    before = log_p(classifier_folder, plain.output("sampler", "latent"))
    after = log_p(classifier_folder, pulled.output("sampler", "latent"))
    print(f"[classifier guidance] {scheduler}: log p(label) {before.tolist()} -> "
          f"{after.tolist()}")
    assert bool((after > before + 0.1).all())


def test_label_by_name_is_the_label_by_index(sess, classifier_folder, uncond_folder,
                                             tmp_path):
    base = pixel_nodes(uncond_folder, "euler", steps=3, batch=1)
    by_index = _run(sess, tmp_path / "i", guided(base, classifier_folder, 10.0, label="2"))
    by_name = _run(sess, tmp_path / "n", guided(base, classifier_folder, 10.0,
                                                label=" Green Triangle"))
    assert torch.equal(by_index.output("decode", "image"), by_name.output("decode", "image"))


# ---- (c) errors that name the input --------------------------------------------------------------


def test_a_latent_model_refuses_a_pixel_classifier(sess, classifier_folder, tmp_path):
    nodes = fx.txt2img_nodes(fx.build_sd(tmp_path / "sd"), "ddim", steps=2, size=32)
    err = _errors(sess, tmp_path / "run", guided(nodes, classifier_folder, 1.0))["guide"]
    assert err.input == "classifier"
    assert "pixels" in err.message and "latents" in err.message


def test_an_unknown_label_names_the_classes(sess, classifier_folder, uncond_folder, tmp_path):
    base = pixel_nodes(uncond_folder, "ddim", steps=2, batch=1)
    err = _errors(sess, tmp_path / "a", guided(base, classifier_folder, 1.0,
                                               label="purple blob"))["guide"]
    assert err.input == "label"
    assert all(name in err.message for name in NAMES)
    err = _errors(sess, tmp_path / "b", guided(base, classifier_folder, 1.0, label="7"))["guide"]
    assert err.input == "label" and "0..2" in err.message


def test_a_folder_that_is_not_a_noise_aware_model_fails_preflight(sess, uncond_folder,
                                                                  tmp_path):
    from engine.errors import ValidationError

    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.json").write_text(json.dumps({"kind": "mystery", "space": {}}))
    (odd / "model.safetensors").write_bytes(b"")
    base = pixel_nodes(uncond_folder, "ddim", steps=2, batch=1)
    for folder, words in ((uncond_folder, "no config.json"), (odd, "unknown kind 'mystery'")):
        nodes = guided(base, folder, 1.0)
        graph = sess.load(write_workflow(tmp_path / "workflow.json", copy.deepcopy(nodes)))
        with pytest.raises(ValidationError) as info:
            sess.run(graph, outputs=["decode"], output_dir=tmp_path / "out", device="cpu")
        (problem,) = [p for p in info.value.problems if p.node_id == "classifier"]
        assert problem.input == "path" and words in problem.message


# ---- (d) the training script -----------------------------------------------------------------


def test_train_classifier_quick_runs_resumes_and_exports(sess, tmp_path):
    from safetensors.torch import load_file

    from tools.builtin import train_classifier

    common = ["--quick", "--threads", "1"]
    assert train_classifier.main(common + ["--work", str(tmp_path / "whole")]) == 0
    out = tmp_path / "whole" / "quick-classifier"
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "noisy_classifier" and config["space"]["kind"] == "pixels"
    assert config["class_names"] == train_classifier.CLASS_NAMES
    assert set(config["evaluation"]) == {"clean", "t 0-250", "t 250-500", "t 500-750",
                                         "t 750-1000"}
    # interrupted after 10 of 20 steps, then the same command: the uninterrupted weights
    part = tmp_path / "part"
    args = common + ["--work", str(part), "--stage", "train"]
    assert train_classifier.main(args + ["--stop-after", "10"]) == 0
    assert (part / "resume.pt").is_file() and not (part / "classifier.safetensors").exists()
    assert train_classifier.main(args) == 0
    whole = load_file(str(tmp_path / "whole" / "classifier.safetensors"))
    resumed = load_file(str(part / "classifier.safetensors"))
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    # the export loads through Loom's loader node, with its classes, on the run's "auto"
    # device (as `main.py run` asks for it)
    graph = sess.load(write_workflow(tmp_path / "load.json", {
        "c": {"type": "loaders.noisy_model", "path": str(out)}}))
    result = sess.run(graph, outputs=["c"], output_dir=tmp_path / "out", device="auto")
    assert result.ok, {k: e.message for k, e in result.errors.items()}
    assert result.output("c", "classes").splitlines()[7] == "7: blue star"
    assert result.output("c", "model").space.size == 32


# ---- (e) the shipped classifier ----------------------------------------------------------------

SHIPPED = fx.ROOT / "resources" / "models" / "loom-classifier"
WORKFLOW = fx.ROOT / "resources" / "workflows" / "builtin" / "classifier_guidance.json"


def test_shipped_classifier_reads_clean_images_of_every_class():
    """Held-out clean images (a seed the training never drew) of each class, read at the
    class model's least noisy level: at least 80 % right for every class."""
    from nodes.lib.noisy_models import load_weights, log_sigma_of, read_folder
    from tools.builtin import train_classes
    from tools.builtin.train_classifier import schedule_of

    folder = read_folder(SHIPPED)
    assert folder.space.kind == "pixels" and folder.space.size == 32
    assert folder.config["class_names"] == train_classes.CLASS_NAMES
    assert sum(f.stat().st_size for f in SHIPPED.iterdir()) < 2 * 1024 * 1024
    net = load_weights(folder)
    images, labels = train_classes.make_dataset(200, seed=31337)
    x, y = train_classes.to_tensor(images), torch.from_numpy(labels)
    log_sigma = log_sigma_of(schedule_of(train_classes.ROOT / "resources" / "models" /
                                         "loom-classes")[0]).expand(len(y))
    with torch.no_grad():
        pred = net(x, log_sigma).argmax(-1)
    for k, name in enumerate(train_classes.CLASS_NAMES):
        right = float((pred[y == k] == k).float().mean())
        assert right >= 0.8, f"{name}: {right:.2f}"


def test_classifier_guidance_workflow_contract():
    doc = json.loads(WORKFLOW.read_text())
    nodes = doc["nodes"]
    assert nodes["guide"]["type"] == "guidance.classifier"
    assert {"label", "scale"} <= set(nodes["guide"]["inputs"])
    assert nodes["guide"]["inputs"]["classifier"] == {"node": "classifier", "output": "model"}
    assert nodes["classifier"]["inputs"]["path"] == "resources/models/loom-classifier"
    assert nodes["label"]["type"] == "conditioning.class_label"
    assert {"seed", "batch"} <= set(nodes["noise"]["inputs"])
    assert nodes["cfg"]["type"] == "sampling.cfg_combine"
    assert nodes["sampler"]["inputs"]["denoiser"] == {"node": "guide", "output": "denoiser"}
    assert [n["type"] for n in nodes.values()].count("image.save") == 1
