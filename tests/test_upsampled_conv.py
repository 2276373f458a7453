"""Upsampling convolutions computed from their source (nodes.lib.cpu_conv.upsampled_conv): a 3×3
convolution of a nearest 2× upsampling is four 2×2 convolutions of the source, one per output
phase, 16/36 of the work. Inside the CPU routing (UNet calls, VAE decodes) Loom takes that path
only for the tensor F.interpolate has just returned, unchanged, and only where it is faster; the
results equal the plain computation within float rounding."""
import os

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from nodes.lib.cpu_conv import conv_backend, decoder_backend, upsampled_conv
from tests import sampling_fixtures as fx

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _phase_convs(fn) -> int:
    """How many 2×2-kernel convolutions fn() ran (the phases of upsampled_conv)."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return sum(e.count for e in prof.key_averages(group_by_input_shape=True)
               if e.key == "aten::convolution" and len(e.input_shapes) > 1
               and list(e.input_shapes[1][-2:]) == [2, 2])


def _plain(x, weight, bias):
    return F.conv2d(F.interpolate(x, scale_factor=2.0, mode="nearest"), weight, bias, padding=1)


@pytest.mark.parametrize(("shape", "out_ch", "bias"), [
    ((1, 8, 5, 7), 6, True),        # odd, non-square
    ((3, 16, 4, 4), 16, False),     # batch, no bias
    ((2, 32, 16, 16), 8, True),
    ((1, 3, 1, 1), 2, True),        # a single source pixel: every tap lands on padding but one
])
def test_equals_upsample_then_convolve(shape, out_ch, bias):
    torch.manual_seed(0)
    x = torch.randn(shape)
    weight = torch.randn(out_ch, shape[1], 3, 3) / (3 * shape[1] ** 0.5)   # outputs ~1
    b = torch.randn(out_ch) if bias else None
    with torch.no_grad():
        ref = _plain(x, weight, b)
        got = upsampled_conv(x, weight, b)
    assert got.shape == ref.shape
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-5), (got - ref).abs().max()
    assert not torch.equal(got, torch.zeros_like(got))


def _upsampler(channels=64):
    torch.manual_seed(0)
    return torch.nn.Conv2d(channels, channels, 3, padding=1)


def test_the_routing_computes_an_upsampling_convolution_from_its_source():
    conv = _upsampler()
    x = torch.randn(2, 64, 16, 16)             # 512 source pixels over the batch
    with torch.no_grad():
        ref = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        assert _phase_convs(lambda: conv(F.interpolate(x, scale_factor=2.0,
                                                       mode="nearest"))) == 0
        with decoder_backend(x):
            got = conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
            assert _phase_convs(lambda: conv(F.interpolate(x, scale_factor=2.0,
                                                           mode="nearest"))) == 4
            by_size = conv(F.interpolate(x, size=(32, 32), mode="nearest"))
            by_tuple = conv(F.interpolate(input=x, scale_factor=(2, 2)))
    for out in (got, by_size, by_tuple):
        assert torch.allclose(out, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", [
    "changed in place", "another tensor", "gradient", "stride 2", "1x1", "few pixels",
    "bilinear", "scale 3", "wide weights", "bfloat16",
])
def test_everything_else_is_convolved_as_written(case):
    """The shortcut is taken only for the exact pattern; anything else gives the plain result
    through the plain path."""
    conv = _upsampler()
    x = torch.randn(2, 64, 16, 16)
    up = dict(scale_factor=2.0, mode="nearest")
    grad = False

    def run():
        u = F.interpolate(x, **up)
        if case == "changed in place":
            u.mul_(2.0)
        if case == "another tensor":
            u = u.clone()
        return conv(u)

    if case == "stride 2":
        conv.stride = (2, 2)
    elif case == "1x1":
        conv = torch.nn.Conv2d(64, 64, 1)
    elif case == "few pixels":
        x = torch.randn(1, 64, 16, 16)           # 256 source pixels
    elif case == "bilinear":
        up = dict(scale_factor=2.0, mode="bilinear", align_corners=False)
    elif case == "scale 3":
        up = dict(scale_factor=3.0, mode="nearest")
    elif case == "gradient":
        grad = True
    elif case == "wide weights":                  # 1280-wide: measured slower that way
        conv = torch.nn.Conv2d(1280, 1280, 3, padding=1)
        x = torch.randn(1, 1280, 24, 24)
    elif case == "bfloat16":
        conv, x = conv.to(torch.bfloat16), x.to(torch.bfloat16)
    with torch.set_grad_enabled(grad):
        ref = run()
        with decoder_backend(torch.zeros(1, 4, 32, 32)):
            n = _phase_convs(run)
            got = run()
    assert n == 0
    assert torch.allclose(got.float(), ref.float(), atol=1e-4, rtol=1e-5)


def test_small_unet_latents_keep_their_switch():
    """At most 8×8 latents the UNet call turns oneDNN off whole (cpu_conv's small-latent rule);
    no routing, so no shortcut either."""
    conv = _upsampler()
    x = torch.randn(2, 64, 16, 16)
    with torch.no_grad(), conv_backend(torch.zeros(2, 4, 8, 8)):
        assert _phase_convs(lambda: conv(F.interpolate(x, scale_factor=2.0,
                                                       mode="nearest"))) == 0


def _tiny_vae():
    from diffusers import AutoencoderKL
    torch.manual_seed(0)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                         block_out_channels=(16, 32, 32),
                         down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3,
                         layers_per_block=1, norm_num_groups=8).eval()


def test_vae_decode_uses_the_shortcut_and_matches_diffusers():
    from nodes.lib.bundles import VaeBundle
    from nodes.lib.vae import decode
    vae = _tiny_vae()
    vb = VaeBundle(vae_ref=vae, family="sd1", scaling_factor=0.5, dtype=torch.float32,
                   device="cpu", source="test")
    latent = torch.randn(1, 4, 32, 32)           # both upsamplers: 1024 and 4096 source pixels
    with torch.no_grad():
        ref = (vae.decode(latent / 0.5).sample / 2 + 0.5).clamp(0, 1)
    n = _phase_convs(lambda: decode(vb, latent))
    got = decode(vb, latent)
    assert n == 8
    assert torch.allclose(got, ref, atol=2e-6), (got - ref).abs().max()
    assert (got * 255).round().eq((ref * 255).round()).float().mean() > 0.999


def test_a_unet_call_uses_the_shortcut_and_matches_diffusers():
    """An upsampler at 16×16 in a CFG batch (SD's 640-wide one gains most: 0.74× per call)."""
    unet = fx.tiny_unet().eval()                   # its one upsampler: 32 wide
    x, e = torch.randn(2, 4, 32, 32), torch.randn(2, 4, 32)
    with torch.no_grad():
        ref = unet(x, 10, e).sample

        def routed():
            with conv_backend(x):
                return unet(x, 10, e).sample
        assert _phase_convs(routed) == 4           # its one upsampler: 16×16, batch 2
        got = routed()
    assert torch.allclose(got, ref, atol=1e-5, rtol=1e-4), (got - ref).abs().max()
