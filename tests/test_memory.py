"""One owner for memory: loaded models and cached results share one budget, models go first,
what the running graph uses stays, and an evicted model is really freed even though cached
results (Load Checkpoint's outputs, a UNet Step's denoiser) still refer to it."""

from __future__ import annotations

import gc
import shutil
import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from engine.api import Session
from engine.memory import MemoryBudget
from tests import sampling_fixtures as fx

# ---- the policy, with stand-in pools -----------------------------------------------------------


class FakePool:
    def __init__(self, name: str, priority: int, items: dict[str, int], budget: MemoryBudget):
        self.name, self.priority = name, priority
        self.items = dict(items)  # key -> bytes, oldest first
        self.runs: dict[str, int | None] = dict.fromkeys(items)
        self.budget = budget
        budget.register(self)

    def nbytes(self) -> int:
        return sum(self.items.values())

    def count(self) -> int:
        return len(self.items)

    def use(self, key: str) -> None:
        self.runs[key] = self.budget.current_run

    def evict_one(self, protect_run):
        for k in list(self.items):
            if protect_run is None or self.runs[k] != protect_run:
                self.runs.pop(k)
                return self.items.pop(k)
        return 0


def test_models_go_first_then_results():
    b = MemoryBudget(100)
    results = FakePool("results", 1, {"r1": 30, "r2": 30}, b)
    models = FakePool("models", 0, {"m1": 40, "m2": 40}, b)
    assert b.total() == 140
    b.make_room()  # 40 over: the older model goes, the results stay
    assert list(models.items) == ["m2"] and list(results.items) == ["r1", "r2"]
    b.set_budget(40)  # 60 over: the other model, then the cheaper result
    assert list(results.items) == ["r2"]
    assert b.evictions == {"models": 2, "results": 1}
    assert b.stats()["results"] == {"count": 1, "bytes": 30}


def test_what_the_running_graph_uses_is_protected_until_it_ends():
    b = MemoryBudget(50)
    models = FakePool("models", 0, {"old": 40}, b)
    results = FakePool("results", 1, {}, b)
    with b.run():
        models.items["new"] = 40
        models.use("new")
        results.items["r"] = 30
        results.use("r")
        b.make_room()
        # only "old" was not used by this run: it goes; the run's own model and result stay,
        # over budget, instead of being reloaded in a loop
        assert list(models.items) == ["new"] and list(results.items) == ["r"]
    # the run ended: now the model goes (first), and the result fits
    assert list(models.items) == [] and list(results.items) == ["r"]


# ---- real models ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sd_folders(tmp_path_factory):
    torch.set_num_threads(1)
    a = fx.build_sd(tmp_path_factory.mktemp("sd_a"))
    b = tmp_path_factory.mktemp("sd_b")
    shutil.rmtree(b)
    shutil.copytree(a, b)  # the same weights in another folder: another model to the manager
    return a, b


def _workflow(folder: Path, seed: int = 1) -> dict:
    return fx.small_txt2img(folder, seed=seed, steps=2)


@pytest.fixture
def session_with_one_budget(monkeypatch):
    """A session whose cache and the model manager share one budget of their own."""
    from nodes.lib import model_manager

    s = Session(cache_budget=2**40)
    models = model_manager.ModelManager(memory=s.cache.memory)
    monkeypatch.setattr(model_manager, "_MANAGER", models)
    yield s, models
    s.executor.shutdown()


def _image(result) -> np.ndarray:
    return result.output("decode").numpy()


def test_an_evicted_model_is_freed_though_cached_results_refer_to_it(
        session_with_one_budget, sd_folders, tmp_path):
    s, models = session_with_one_budget
    a, b = sd_folders
    ga = s.load(fx.write_workflow(tmp_path / "a.json", _workflow(a)))
    first = s.run(ga, output_dir=tmp_path)
    assert first.ok, first.errors
    one_model = models.nbytes()
    unet_a = weakref.ref(first.output("ckpt", "model").unet)
    assert unet_a() is not None
    # room for one checkpoint (and a little) and the cached tensors
    s.cache.set_budget(int(one_model * 1.1) + 2 * s.cache.nbytes())
    gb = s.load(fx.write_workflow(tmp_path / "b.json", _workflow(b)))
    second = s.run(gb, output_dir=tmp_path)
    assert second.ok, second.errors
    # A's Load Checkpoint and UNet Step results are still cached, holding handles, not weights
    assert s.cache.peek(first.keys["ckpt"]) is not None
    assert s.cache.peek(first.keys["unet"]) is not None
    del first
    gc.collect()
    assert unet_a() is None, "the evicted UNet is still alive"
    assert models.nbytes() <= int(one_model * 1.1)
    assert {k[0] for k in models.keys()} == {second.output("ckpt", "model").unet_ref.key[0]}
    assert s.cache.memory.total() <= s.cache.budget_bytes
    # and A with a new seed still works: the cached Load Checkpoint result's handles load the
    # weights again when the sampler borrows them; the image is the one a fresh session makes
    loads = models.loads
    s.set(ga, "noise.seed", 2)
    again = s.run(ga, output_dir=tmp_path)
    assert again.ok and "ckpt" in again.cached and "sampler" in again.ran, again.errors
    assert models.loads > loads
    ref = Session(cache_budget=2**40)
    try:
        gr = ref.load(tmp_path / "a.json")
        ref.set(gr, "noise.seed", 2)
        expected = ref.run(gr, output_dir=tmp_path)
        assert np.array_equal(_image(again), _image(expected))
    finally:
        ref.executor.shutdown()


def test_the_status_line_counts_models_and_results(session_with_one_budget, sd_folders,
                                                   tmp_path):
    from editor.runner import _size

    s, models = session_with_one_budget
    g = s.load(fx.write_workflow(tmp_path / "a.json", _workflow(sd_folders[0])))
    assert s.run(g, output_dir=tmp_path).ok
    stats = s.cache.memory.stats()
    assert stats["models"] == {"count": 3, "bytes": models.nbytes()}
    assert stats["results"]["count"] == len(s.cache) > 0
    assert stats["results"]["bytes"] == s.cache.nbytes() > 0
    assert _size(3 * 2**20) == "3.0 MB" and _size(2**31) == "2.00 GB"


def test_a_changed_copy_of_a_model_folder_is_another_model(sd_folders, tmp_path):
    """Two copies of a folder, one with a file changed in place (same size, mtime restored),
    must not share a cache entry or a loaded model."""
    import os

    from engine.paths import file_identity

    a, _ = sd_folders
    c = tmp_path / "copy"
    shutil.copytree(a, c)
    f = next((c / "unet").glob("*.safetensors"))
    st = f.stat()
    data = bytearray(f.read_bytes())
    data[-1] ^= 0xFF  # one byte of the last tensor, same size
    f.write_bytes(bytes(data))
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert file_identity(a) != file_identity(c)
    s = Session(cache_budget=2**40)
    try:
        ra = s.run(s.load(fx.write_workflow(tmp_path / "a.json", _workflow(a))),
                   output_dir=tmp_path)
        rc = s.run(s.load(fx.write_workflow(tmp_path / "c.json", _workflow(c))),
                   output_dir=tmp_path)
        assert ra.ok and rc.ok and "ckpt" in rc.ran
        assert ra.keys["ckpt"] != rc.keys["ckpt"]
        assert ra.output("ckpt", "model").unet is not rc.output("ckpt", "model").unet
    finally:
        s.executor.shutdown()
