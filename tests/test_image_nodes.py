"""Image nodes that need no model: composite through a mask."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from engine.errors import NodeInputError  # noqa: E402
from nodes.image import CompositeNode  # noqa: E402


def _composite(base, image, mask, feather=0):
    n = CompositeNode()
    n.base, n.image, n.mask, n.feather = base, image, mask, feather
    return n.run(None)


def test_composite_keeps_the_base_outside_the_mask_and_takes_the_image_inside():
    base = torch.zeros(1, 3, 16, 16)
    image = torch.ones(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 8:] = 1.0
    out = _composite(base, image, mask)
    assert torch.equal(out[..., :8], base[..., :8]) and torch.equal(out[..., 8:], image[..., 8:])
    soft = _composite(base, image, mask, feather=2)
    assert torch.equal(soft[..., :5], base[..., :5])  # beyond the feather: exact
    assert 0 < soft[0, 0, 0, 7].item() < 1 and 0 < soft[0, 0, 0, 8].item() < 1
    assert torch.equal(soft[..., 11:], image[..., 11:])


def test_composite_spreads_batches_and_resizes_the_mask():
    base = torch.zeros(1, 3, 16, 16)
    image = torch.rand(4, 3, 16, 16)
    mask = torch.ones(1, 1, 4, 4)  # a low-resolution mask is scaled to the image
    out = _composite(base, image, mask)
    assert out.shape == (4, 3, 16, 16) and torch.allclose(out, image)


def test_composite_of_different_sizes_names_the_input():
    with pytest.raises(NodeInputError) as e:
        _composite(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 16, 16), torch.zeros(1, 1, 8, 8))
    assert e.value.input == "base"
