"""GPU memory modes (nodes.lib.vram with the model manager): the placement machinery run on the
CPU, which is treated as a managed device for these tests (the moves are then no-ops, but every
decision, hook and borrow runs as on a GPU), with the built-in model and the default workflow.
What only a GPU shows (bytes really leaving the device, peak VRAM) is in benchmarks/gpu_check.sh.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from engine.api import Session
from nodes.lib import vram
from nodes.lib.model_manager import clear_models, manager


@pytest.fixture
def managed_cpu(monkeypatch):
    """The CPU as a managed device, a clean model manager before and after, mode reset."""
    monkeypatch.setattr(vram, "OFFLOAD_DEVICE_TYPES", {"cuda", "mps", "cpu"})
    clear_models()
    yield
    vram.set_mode(None)
    vram.set_budget("cpu", None)
    clear_models()


def render(seed: int = 3) -> torch.Tensor:
    s = Session()
    g = s.load()
    s.set(g, "noise.batch", 1)
    s.set(g, "noise.seed", seed)
    result = s.run(g, outputs=["decode"], device="cpu")
    assert result.ok, result.errors
    return result.output("decode", "image")


@pytest.fixture(scope="module")
def reference() -> torch.Tensor:
    clear_models()
    image = render()
    clear_models()
    return image


def unet_entry():
    m = manager()
    with m._lock:
        for key, entry in m._entries.items():
            if "unet" in str(key[1:2]).lower():
                return entry
    raise AssertionError(f"no UNet entry among {m.keys()}")


def test_high_mode_keeps_everything_resident(managed_cpu, reference):
    vram.set_mode("high")
    assert torch.equal(render(), reference)
    assert manager().offloads == 0
    assert not any(e.staged for e in manager()._entries.values())  # placed for good


def test_auto_mode_with_room_moves_nothing_out(managed_cpu, reference):
    vram.set_mode("auto")
    vram.set_budget("cpu", 10 * 2**30)
    before = manager().offloads
    assert torch.equal(render(), reference)
    assert manager().offloads == before
    stats = manager().vram_stats()
    assert stats and sum(stats.values()) > 0  # the staged components are resident


def test_low_mode_keeps_one_model_on_the_device(managed_cpu, reference):
    vram.set_mode("low")
    before = manager().offloads
    assert torch.equal(render(), reference)
    assert torch.equal(render(seed=3), reference)
    # text encoder -> UNet -> VAE: each borrow moved the previous one out
    assert manager().offloads - before >= 2
    resident = [e for e in manager()._entries.values() if e.resident is not None]
    assert len(resident) == 1


def test_auto_mode_moves_the_least_recently_used_out_when_short(managed_cpu, reference):
    vram.set_mode("auto")
    clear_models()
    render()
    unet_bytes = unet_entry().vram_bytes
    clear_models()
    # room for the UNet but not for the UNet and the text encoder together
    vram.set_budget("cpu", unet_bytes + unet_bytes // 20)
    before = manager().offloads
    assert torch.equal(render(), reference)
    assert manager().offloads > before
    assert sum(manager().vram_stats().values()) <= unet_bytes + unet_bytes // 20


def test_a_model_larger_than_the_budget_runs_block_by_block(managed_cpu, reference):
    vram.set_mode("auto")
    vram.set_budget("cpu", 1 << 20)  # 1 MB: no component of the built-in model fits
    assert torch.equal(render(), reference)
    unet = unet_entry().value
    assert getattr(unet, vram.BLOCK_ATTR) == torch.device("cpu")
    assert vram.module_device(unet) == torch.device("cpu")


def test_none_mode_runs_every_model_block_by_block(managed_cpu, reference):
    vram.set_mode("none")
    assert torch.equal(render(), reference)
    assert getattr(unet_entry().value, vram.BLOCK_ATTR, None) is not None
    assert torch.equal(render(seed=3), reference)  # again, from the cached models


def test_block_offload_hooks_move_weights_in_and_out():
    """On a real second device this is the whole point; on the CPU check the hooks' effect
    through a recording device move."""
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(3, 4)
    expected = net(x)
    seen = []
    orig = vram._move_own

    def spy(module, device):
        seen.append((type(module).__name__, str(device)))
        orig(module, device)

    vram.block_offload(net, "cpu")
    vram.block_offload(net, "cpu")  # idempotent: hooks once
    try:
        vram._move_own = spy
        out = net(x)
    finally:
        vram._move_own = orig
    assert torch.equal(out, expected)
    assert seen == [("Linear", "cpu")] * 4  # each Linear: in, out; ReLU holds no weights


def test_modes_and_budget_parsing(monkeypatch):
    with pytest.raises(ValueError, match="auto, high, low, none"):
        vram.normalise("medium")
    monkeypatch.setenv(vram.ENV, "low")
    vram.set_mode(None)
    assert vram.current_mode() == "low"
    monkeypatch.setenv(vram.BUDGET_ENV, "1.5")
    assert vram.budget("cuda") == int(1.5 * 2**30)
    assert not vram.managed("cpu") and vram.managed("cuda")


def test_cli_vram_flag(monkeypatch, capsys):
    import main

    monkeypatch.setenv("LOOM_VRAM", "auto")  # restored (removed) after the test
    assert main.main(["--vram", "medium", "nodes"]) == main.EXIT_INVALID
    assert "--vram: choose one of auto, high, low, none" in capsys.readouterr().err
    assert main.main(["--vram=low", "nodes", "--json"]) == main.EXIT_OK
    assert os.environ["LOOM_VRAM"] == "low"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_modes_same_image_less_memory_when_low():
    """On a GPU: every mode gives the same image; low and none hold less VRAM between nodes
    than high (benchmarks/gpu_check.sh runs this)."""
    def run(mode):
        vram.set_mode(mode)
        clear_models()
        torch.cuda.reset_peak_memory_stats()
        s = Session()
        g = s.load()
        s.set(g, "noise.batch", 1)
        result = s.run(g, outputs=["decode"], device="cuda")
        assert result.ok, result.errors
        return result.output("decode", "image"), torch.cuda.memory_allocated()

    try:
        high, high_held = run("high")
        for mode in ("auto", "low", "none"):
            image, held = run(mode)
            assert (image - high).abs().max() <= 1 / 255, mode
            if mode in ("low", "none"):
                assert held < high_held, (mode, held, high_held)
    finally:
        vram.set_mode(None)
        clear_models()
