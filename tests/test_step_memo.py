"""The text context's key/value projections computed once per sampling loop (nodes.lib.step_memo):
bit-identical results, remembered only while the context, the weights and the biases are the same
unchanged tensors, never with a gradient, within a byte limit, and only inside a sampling loop."""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from nodes.lib import step_memo
from nodes.lib.bundles import Conditioning, ModelBundle
from nodes.lib.denoise import UNetDenoiser
from tests import sampling_fixtures as fx


def _context_projections(unet) -> int:
    """How many F.linear calls of the text context one UNet call makes (to_k, to_v per
    cross-attention layer)."""
    return 2 * sum(1 for name, m in unet.named_modules() if name.endswith("attn2"))


@pytest.fixture
def setup():
    unet = fx.tiny_unet().eval()
    model = ModelBundle(unet_ref=unet, family="sd1", prediction_type="epsilon",
                        scheduler_config={}, dtype=torch.float32, device="cpu", source="test")
    torch.manual_seed(1)
    conds = [Conditioning(embeds=torch.randn(1, 6, 32)), Conditioning(embeds=torch.randn(1, 6, 32))]
    x = torch.randn(2, 4, 8, 8)
    return unet, UNetDenoiser(model), conds, x


def _steps(denoiser, conds, x, n=3):
    return [denoiser(x, torch.tensor(900.0 - 100 * i), conds) for i in range(n)]


@pytest.mark.parametrize("size", [8, 32])
def test_later_steps_reuse_the_projections_and_give_identical_results(setup, size):
    """At 32×32 the CPU convolution routing (nodes.lib.cpu_conv) runs around the same call."""
    unet, denoiser, conds, x = setup
    x = torch.randn(2, 4, size, size)
    with torch.no_grad():
        plain = _steps(denoiser, conds, x)
        with step_memo.sampling_scope() as memo:
            memoised = _steps(denoiser, conds, x)
    per_call = _context_projections(unet)
    assert per_call == 8                              # down 1, mid 1, up 2 layers
    assert memo.misses == per_call                    # the first step computes them
    assert memo.hits == 2 * per_call                  # the two others reuse them
    rows = 2 * 6                                      # CFG rows × context tokens
    kv = sum(2 * rows * m.to_k.out_features * 4 for n, m in unet.named_modules()
             if n.endswith("attn2"))
    assert memo.bytes == rows * 32 * 4 + kv           # the context and its projections
    for a, b in zip(plain, memoised):
        assert torch.equal(a, b)
    assert step_memo.active() is None                 # dropped with the loop


def test_a_changed_context_or_weight_is_computed_again(setup):
    unet, denoiser, conds, x = setup
    per_call = _context_projections(unet)
    with torch.no_grad(), step_memo.sampling_scope() as memo:
        denoiser(x, torch.tensor(500.0), conds)
        conds[1].embeds.mul_(2.0)                     # edited in place: a new context
        got_context = denoiser(x, torch.tensor(500.0), conds)
        assert memo.hits == 0
        attn = next(m for n, m in unet.named_modules() if n.endswith("attn2"))
        attn.to_k.weight.add_(0.5)                    # one weight changed in place
        got_weight = denoiser(x, torch.tensor(500.0), conds)
        assert memo.hits == per_call - 1
    with torch.no_grad():
        assert torch.equal(got_weight, denoiser(x, torch.tensor(500.0), conds))
        attn.to_k.weight.sub_(0.5)
        assert torch.allclose(got_context, denoiser(x, torch.tensor(500.0), conds), atol=1e-6)


def test_other_conditionings_get_their_own_context(setup):
    unet, denoiser, conds, x = setup
    other = [conds[0], Conditioning(embeds=torch.randn(1, 6, 32))]
    with torch.no_grad(), step_memo.sampling_scope() as memo:
        a = denoiser(x, torch.tensor(500.0), conds)
        b = denoiser(x, torch.tensor(500.0), other)
        assert memo.hits == 0
        assert torch.equal(denoiser(x, torch.tensor(500.0), conds), a)
        assert torch.equal(denoiser(x, torch.tensor(500.0), other), b)
        assert memo.hits == 2 * _context_projections(unet)
    assert not torch.equal(a, b)


def test_nothing_is_remembered_outside_a_loop_with_a_gradient_or_past_the_limit(setup):
    unet, denoiser, conds, x = setup
    assert step_memo.active() is None
    with step_memo.sampling_scope() as memo:          # gradient recorded: computed each time
        _steps(denoiser, conds, x, 2)
        assert memo.hits == 0 and memo.bytes == 0
    with torch.no_grad():
        ref = _steps(denoiser, conds, x, 2)
        with step_memo.sampling_scope() as memo:
            memo.max_bytes = 100                      # room for nothing
            got = _steps(denoiser, conds, x, 2)
            assert memo.hits == 0 and memo.bytes == 0
    for a, b in zip(ref, got):
        assert torch.equal(a, b)


def test_the_sampler_runs_its_loop_in_a_scope(monkeypatch):
    """The default workflow (built-in model): the same image with and without the memo, and
    the sampler's steps after the first reuse the projections."""
    from engine.api import Session
    scopes = []
    real = step_memo.sampling_scope

    def recording():
        cm = real()

        class Wrap:
            def __enter__(self):
                memo = cm.__enter__()
                scopes.append(memo)
                return memo

            def __exit__(self, *exc):
                return cm.__exit__(*exc)
        return Wrap()

    def render():
        s = Session()
        g = s.load()
        s.set(g, "noise.batch", 1)
        s.set(g, "noise.seed", 5)
        result = s.run(g, outputs=["decode"], device="cpu")
        assert result.ok, result.errors
        return result.output("decode", "image")

    monkeypatch.setattr(step_memo, "sampling_scope", recording)
    with_memo = render()
    assert len(scopes) == 1 and scopes[0].hits > 0
    monkeypatch.setattr(step_memo, "sampling_scope", lambda: _no_memo())
    assert torch.equal(render(), with_memo)


class _no_memo:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def test_projections_of_weights_that_vanished_are_forgotten():
    """A weight copied anew for every call (never the same object twice) is never reused, and
    its stale entries do not pile up."""
    memo = step_memo.StepMemo()
    x, w = torch.randn(2, 6, 32), torch.randn(16, 32)
    with torch.no_grad(), memo.projecting(x):
        outs = [torch.nn.functional.linear(x, w.clone()) for _ in range(5)]
        same = torch.nn.functional.linear(x, w)
        again = torch.nn.functional.linear(input=x, weight=w)
    assert memo.misses == 6 and memo.hits == 1
    assert again is same
    assert memo.bytes == 2 * 6 * 16 * 4               # w's alone: the copies' went with them
    for out in outs:
        assert torch.equal(out, same)
