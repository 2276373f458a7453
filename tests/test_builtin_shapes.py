"""The built-in model's data set and the analyser that scores generated images."""
from __future__ import annotations

import random

import numpy as np
import pytest

from tools.builtin import shapes


def test_the_data_set_is_deterministic_and_never_draws_held_out_pairs():
    a_img, a_cov, a_caps = shapes.make_dataset(300, seed=3)
    b_img, _, b_caps = shapes.make_dataset(300, seed=3)
    assert np.array_equal(a_img, b_img) and a_caps == b_caps
    assert a_img.shape == (300, 64, 64, 3) and a_img.dtype == np.uint8
    assert 0.0 < a_cov.mean() < 0.3
    rng = random.Random(0)
    for _ in range(2000):
        scene = shapes.random_scene(rng)
        assert (scene.colour, scene.shape) not in shapes.HELD_OUT


def test_captions_cover_the_grammar_and_parse_back():
    _, _, caps = shapes.make_dataset(2000, seed=1)
    words = " ".join(caps)
    for word in [*shapes.COLOURS, *shapes.SHAPES, *shapes.SIZES, "top left", "bottom right",
                 "in the center", "background"]:
        assert word in words
    assert any(c.split() == ["a", c.split()[1]] for c in caps)  # e.g. "a circle"
    c = shapes.Caption("blue", "star", "large", "top left", "white")
    assert c.text() == "a large blue star at the top left on a white background"
    assert shapes.parse_caption(c.text()) == c
    assert shapes.parse_caption("a red circle") == shapes.Caption("red", "circle")


def test_the_analyser_reads_back_every_attribute_of_drawn_scenes():
    rng = random.Random(5)
    for _ in range(400):
        scene = shapes.random_scene(rng, allow_held_out=True)
        image, _ = shapes.render(scene)
        verdict = shapes.score(shapes.scene_caption(scene), shapes.analyse(image))
        assert all(verdict.values()), (scene, shapes.analyse(image))


@pytest.mark.parametrize("shape", shapes.SHAPES)
def test_the_analyser_tells_shapes_apart_at_both_sizes(shape):
    for size in shapes.SIZES:
        img, _ = shapes.render(shapes.Scene("white", shape, size, "center", "black"))
        assert shapes.analyse(img).shape == shape


def test_an_empty_or_noisy_image_has_no_shape():
    flat = np.full((64, 64, 3), 128, np.uint8)
    a = shapes.analyse(flat)
    assert a.background == "gray" and a.colour is None and a.shape is None
    verdict = shapes.score(shapes.Caption("red", "circle", background="gray"), a)
    assert verdict == {"colour": False, "shape": False, "position": None, "background": True}
