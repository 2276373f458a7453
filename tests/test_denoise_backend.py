"""Small CPU latents run the UNet's convolutions on PyTorch's native path (faster than oneDNN
at 8×8 here), larger ones keep oneDNN; the switch is scoped to the call and changes the result
only by float rounding."""
import torch

from nodes.lib.denoise import _conv_backend


def _seen_inside(x):
    with _conv_backend(x):
        return torch.backends.mkldnn.enabled


def test_small_cpu_latents_use_the_native_convolution_and_the_flag_comes_back():
    before = torch.backends.mkldnn.enabled
    assert _seen_inside(torch.zeros(2, 4, 8, 8)) is False
    assert _seen_inside(torch.zeros(1, 4, 16, 16)) is before   # larger latents keep oneDNN
    assert _seen_inside(torch.zeros(1, 4, 64, 64)) is before
    assert torch.backends.mkldnn.enabled is before


def test_native_and_onednn_convolutions_agree():
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(128, 128, 3, padding=1)
    x = torch.randn(2, 128, 8, 8)
    with torch.no_grad():
        ref = conv(x)
        with _conv_backend(x):
            got = conv(x)
    assert torch.allclose(got, ref, atol=1e-5)
