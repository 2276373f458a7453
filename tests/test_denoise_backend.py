"""Which CPU convolution kernel the UNet's convolutions run on (nodes.lib.cpu_conv): small latents
run every convolution natively, larger ones route only the wide, few-pixel convolutions (where
oneDNN's per-call weight re-layout dominates) to the native kernel; the flag always comes back and
the results differ from oneDNN's by float rounding only."""
import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from nodes.lib.cpu_conv import conv_backend, prefers_native
from nodes.lib.denoise import UNetDenoiser


def _seen_inside(x):
    with conv_backend(x):
        return torch.backends.mkldnn.enabled


def _kernels(fn) -> set[str]:
    """The convolution kernels (aten op names) that fn() ran."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {e.key for e in prof.key_averages()
            if e.key in ("aten::mkldnn_convolution", "aten::_slow_conv2d_forward")}


def test_small_cpu_latents_use_the_native_convolution_and_the_flag_comes_back():
    before = torch.backends.mkldnn.enabled
    assert _seen_inside(torch.zeros(2, 4, 8, 8)) is False
    assert _seen_inside(torch.zeros(1, 4, 16, 16)) is before   # larger latents keep oneDNN...
    assert _seen_inside(torch.zeros(1, 4, 64, 64)) is before
    assert torch.backends.mkldnn.enabled is before


def test_half_precision_keeps_onednn():
    """bf16 / fp16 convolutions are oneDNN's (AMX) strength; the native kernel is many times
    slower there, so neither the small-latent switch nor the routing applies."""
    before = torch.backends.mkldnn.enabled
    assert _seen_inside(torch.zeros(2, 4, 8, 8, dtype=torch.bfloat16)) is before
    wide = torch.nn.Conv2d(1280, 1280, 3, padding=1).to(torch.bfloat16)
    x = torch.randn(2, 1280, 4, 4, dtype=torch.bfloat16)
    with torch.no_grad(), conv_backend(torch.zeros(2, 4, 32, 32, dtype=torch.bfloat16)):
        assert "aten::_slow_conv2d_forward" not in _kernels(lambda: wide(x))


@pytest.mark.parametrize(("shape", "weight", "stride", "padding", "native"), [
    ((2, 1280, 4, 4), (1280, 1280, 3, 3), 1, 1, True),      # SD's lowest level at 256 px
    ((2, 2560, 8, 8), (1280, 2560, 3, 3), 1, 1, True),
    ((2, 1280, 16, 16), (1280, 1280, 3, 3), 1, 1, True),    # 512 output pixels: the limit
    ((2, 1280, 32, 32), (1280, 1280, 3, 3), 2, 1, True),    # stride 2: 16×16 out
    ((4, 1280, 16, 16), (1280, 1280, 3, 3), 1, 1, False),   # 1024 output pixels
    ((1, 1280, 32, 32), (1280, 1280, 3, 3), 1, 1, False),
    ((2, 640, 4, 4), (640, 640, 3, 3), 1, 1, False),        # 3.7 M weights: oneDNN
    ((2, 1280, 4, 4), (1280, 1280, 1, 1), 1, 0, False),
    ((2, 1280, 4, 4), (1280, 1280, 3, 3), 1, "same", False),
])
def test_the_rule(shape, weight, stride, padding, native):
    assert prefers_native(torch.empty(shape), torch.empty(weight), stride, padding) is native


def test_larger_latents_route_only_wide_few_pixel_convolutions_to_the_native_kernel():
    torch.manual_seed(0)
    wide = torch.nn.Conv2d(1280, 1280, 3, padding=1)          # 14.7 M weights
    narrow = torch.nn.Conv2d(64, 64, 3, padding=1)
    latents = torch.zeros(2, 4, 32, 32)
    x_wide, x_narrow = torch.randn(2, 1280, 4, 4), torch.randn(2, 64, 16, 16)
    before = torch.backends.mkldnn.enabled
    with torch.no_grad():
        ref_wide, ref_narrow = wide(x_wide), narrow(x_narrow)
        assert _kernels(lambda: wide(x_wide)) == {"aten::mkldnn_convolution"}
        with conv_backend(latents):
            assert _kernels(lambda: wide(x_wide)) == {"aten::_slow_conv2d_forward"}
            assert torch.backends.mkldnn.enabled is before     # restored after the one call
            assert _kernels(lambda: narrow(x_narrow)) == {"aten::mkldnn_convolution"}
            got_wide = torch.nn.functional.conv2d(x_wide, wide.weight, wide.bias, padding=1)
            assert _kernels(lambda: torch.nn.functional.conv2d(
                input=x_wide, weight=wide.weight, padding=1)) == {"aten::_slow_conv2d_forward"}
            got_narrow = narrow(x_narrow)
    assert torch.backends.mkldnn.enabled is before
    assert torch.allclose(got_wide, ref_wide, atol=1e-4, rtol=1e-5)
    assert torch.equal(got_narrow, ref_narrow)


def test_the_flag_comes_back_when_the_convolution_fails():
    before = torch.backends.mkldnn.enabled
    weight = torch.zeros(1280, 1280, 3, 3)
    with conv_backend(torch.zeros(2, 4, 32, 32)), pytest.raises(RuntimeError):
        torch.nn.functional.conv2d(torch.zeros(2, 7, 4, 4), weight, padding=1)  # wrong channels
    assert torch.backends.mkldnn.enabled is before


def test_native_and_onednn_convolutions_agree():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = torch.randn(2, 128, 8, 8)
    with torch.no_grad():
        ref = conv(x)
        with conv_backend(x):
            got = conv(x)
    assert torch.allclose(got, ref, atol=1e-5)


def test_the_unet_call_runs_inside_the_routing(monkeypatch):
    """UNetDenoiser puts its UNet call (and ControlNets) in conv_backend(latents)."""
    import nodes.lib.denoise as denoise
    seen = []

    class Recorder:
        def __init__(self, x):
            seen.append(tuple(x.shape))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(denoise, "conv_backend", Recorder)
    from diffusers import UNet2DConditionModel

    from nodes.lib.bundles import Conditioning, ModelBundle
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4,
                                block_out_channels=(32, 64), layers_per_block=1,
                                cross_attention_dim=32, attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                norm_num_groups=8).eval()
    model = ModelBundle(unet_ref=unet, family="sd1", prediction_type="epsilon",
                        scheduler_config={}, dtype=torch.float32, device="cpu", source="test")
    cond = Conditioning(embeds=torch.zeros(1, 4, 32))
    with torch.no_grad():
        UNetDenoiser(model)(torch.zeros(2, 4, 16, 16), torch.tensor(10.0), [cond, cond])
    assert seen == [(2, 4, 16, 16)]
