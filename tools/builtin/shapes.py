"""The procedural data set of the built-in model, and the analyser that scores its images.

Every image is 64×64 RGB: one flat shape (circle, square, triangle, star) of a named colour and
size at one of nine positions on a flat background of another named colour. Each image comes
with a caption from a small grammar; parts of the caption may be left out, and then that
attribute is random in the image. A few colour+shape combinations (HELD_OUT) never appear in the
training data, so the evaluation can tell generalisation from memory.

The same module holds the analyser that the evaluation and the tests use: it reads the
background colour, the shape's colour, its class (from geometry) and its position back from any
64×64 image, so "does the image follow the prompt" becomes a number.

Pure numpy + Pillow: no torch here.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64
SUPERSAMPLE = 4

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (255, 140, 0),
    "yellow": (245, 220, 30),
    "green": (30, 170, 50),
    "blue": (30, 80, 230),
    "purple": (140, 50, 190),
    "pink": (255, 130, 200),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
SHAPES = ("circle", "square", "triangle", "star")
SIZES = {"small": 20.0, "large": 32.0}   # diameter of the circumscribed circle, pixels
POSITIONS: dict[str, tuple[float, float]] = {   # centre (x, y) in pixels
    "top left": (19, 19), "top": (32, 19), "top right": (45, 19),
    "left": (19, 32), "center": (32, 32), "right": (45, 32),
    "bottom left": (19, 45), "bottom": (32, 45), "bottom right": (45, 45),
}
POSITION_PHRASES = {
    "top left": "at the top left", "top": "at the top", "top right": "at the top right",
    "left": "on the left", "center": "in the center", "right": "on the right",
    "bottom left": "at the bottom left", "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}
# Colour+shape pairs that never appear in training images (whatever the caption says).
HELD_OUT: frozenset[tuple[str, str]] = frozenset({
    ("green", "star"), ("blue", "triangle"), ("orange", "circle"), ("purple", "square"),
})
MIN_CONTRAST = 90.0   # shape and background colours closer than this are never drawn together


def colour_distance(a, b) -> float:
    return float(math.dist(tuple(map(float, a)), tuple(map(float, b))))


def _allowed_pair(shape_colour: str, background: str) -> bool:
    return (shape_colour != background
            and colour_distance(COLOURS[shape_colour], COLOURS[background]) >= MIN_CONTRAST)


@dataclass(frozen=True)
class Scene:
    """What is in one image; a caption names some or all of it."""
    colour: str
    shape: str
    size: str
    position: str
    background: str
    jitter: tuple[float, float] = (0.0, 0.0)
    size_scale: float = 1.0


@dataclass(frozen=True)
class Caption:
    """Which attributes a caption names (None = left out, random in the image)."""
    colour: str | None = None
    shape: str | None = None
    size: str | None = None
    position: str | None = None
    background: str | None = None

    def text(self) -> str:
        words = ["a"]
        if self.size:
            words.append(self.size)
        if self.colour:
            words.append(self.colour)
        words.append(self.shape or "shape")
        if self.position:
            words.append(POSITION_PHRASES[self.position])
        if self.background:
            words.append(f"on a {self.background} background")
        return " ".join(words)


def parse_caption(text: str) -> Caption:
    """Reads a caption of the grammar back (used by the evaluation to know what to check)."""
    t = " " + text.lower().strip() + " "
    background = None
    for name in COLOURS:
        if f" on a {name} background " in t:
            background = name
            t = t.replace(f" on a {name} background ", " ")
    position = None
    for name, phrase in sorted(POSITION_PHRASES.items(), key=lambda kv: -len(kv[1])):
        if f" {phrase} " in t:
            position = name
            t = t.replace(f" {phrase} ", " ")
            break
    colour = next((c for c in COLOURS if f" {c} " in t), None)
    shape = next((s for s in SHAPES if f" {s} " in t), None)
    size = next((s for s in SIZES if f" {s} " in t), None)
    return Caption(colour, shape, size, position, background)


def random_scene(rng: random.Random, caption: Caption | None = None,
                 allow_held_out: bool = False) -> Scene:
    """A scene that agrees with `caption` (what it leaves out is drawn at random)."""
    caption = caption or Caption()
    for _ in range(1000):
        colour = caption.colour or rng.choice(list(COLOURS))
        shape = caption.shape or rng.choice(SHAPES)
        background = caption.background or rng.choice(list(COLOURS))
        if not allow_held_out and (colour, shape) in HELD_OUT:
            continue
        if not _allowed_pair(colour, background):
            continue
        size = caption.size or rng.choice(list(SIZES))
        position = caption.position or rng.choice(list(POSITIONS))
        jitter = (rng.uniform(-2.5, 2.5), rng.uniform(-2.5, 2.5))
        return Scene(colour, shape, size, position, background, jitter, rng.uniform(0.9, 1.1))
    raise ValueError(f"no scene fits the caption {caption.text()!r}")


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        h = r / math.sqrt(2.0)
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx + r * math.cos(math.radians(a)), cy - r * math.sin(math.radians(a)))
                for a in (90, 210, 330)]
    if shape == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.382
            a = math.radians(90 + 36 * i)
            pts.append((cx + rad * math.cos(a), cy - rad * math.sin(a)))
        return pts
    raise ValueError(shape)


def render(scene: Scene) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 H×W×3, object coverage float32 H×W in [0, 1]), anti-aliased."""
    s = SUPERSAMPLE
    big = SIZE * s
    img = Image.new("RGB", (big, big), COLOURS[scene.background])
    cover = Image.new("L", (big, big), 0)
    cx, cy = POSITIONS[scene.position]
    cx, cy = (cx + scene.jitter[0]) * s, (cy + scene.jitter[1]) * s
    r = SIZES[scene.size] * scene.size_scale / 2 * s
    if scene.shape == "square":   # squares read as large as circles: same area-ish footprint
        r *= 1.1
    draws = ((ImageDraw.Draw(img), COLOURS[scene.colour]), (ImageDraw.Draw(cover), 255))
    for canvas, fill in draws:
        if scene.shape == "circle":
            canvas.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
        else:
            canvas.polygon(_shape_points(scene.shape, cx, cy, r), fill=fill)
    img = img.resize((SIZE, SIZE), Image.Resampling.BOX)
    cover = cover.resize((SIZE, SIZE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8), np.asarray(cover, dtype=np.float32) / 255.0


def random_caption(rng: random.Random, scene: Scene) -> Caption:
    """A caption for `scene` that names each attribute with some probability (shape: always)."""
    return Caption(
        colour=scene.colour if rng.random() < 0.85 else None,
        shape=scene.shape,
        size=scene.size if rng.random() < 0.6 else None,
        position=scene.position if rng.random() < 0.7 else None,
        background=scene.background if rng.random() < 0.7 else None,
    )


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """n training examples: images uint8 (n,64,64,3), coverage (n,64,64), captions."""
    rng = random.Random(seed)
    images = np.empty((n, SIZE, SIZE, 3), np.uint8)
    covers = np.empty((n, SIZE, SIZE), np.float32)
    captions = []
    for i in range(n):
        scene = random_scene(rng)
        images[i], covers[i] = render(scene)
        captions.append(random_caption(rng, scene).text())
    return images, covers, captions


# ----------------------------------------------------------------------------- the analyser

@dataclass(frozen=True)
class Analysis:
    background: str
    colour: str | None        # None: no shape found
    shape: str | None
    position: str | None
    area: int
    fill_ratio: float
    centroid: tuple[float, float] | None


def nearest_colour(rgb) -> str:
    return min(COLOURS, key=lambda name: colour_distance(COLOURS[name], rgb))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (small images: a plain flood fill)."""
    h, w = mask.shape
    labels = np.zeros((h, w), np.int32)
    best, best_size, label = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        label += 1
        stack, size = [(y0, x0)], 0
        labels[y0, x0] = label
        while stack:
            y, x = stack.pop()
            size += 1
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = label
                    stack.append((yy, xx))
        if size > best_size:
            best, best_size = label, size
    return labels == best if best else np.zeros_like(mask)


def position_of(x: float, y: float) -> str:
    col = "left" if x < 25 else ("right" if x > 39 else "")
    row = "top" if y < 25 else ("bottom" if y > 39 else "")
    return f"{row} {col}".strip() or "center"


def shape_of(fill_ratio: float, centroid_height: float = 0.5) -> str:
    """Shape class from geometry: how much of its bounding box a shape fills (star ≈ 0.33,
    triangle ≈ 0.5, circle ≈ 0.79, square ≈ 1) and, to tell a small blurred star from a
    triangle, how low its centroid sits in the box (triangle ≈ 0.67, star ≈ 0.55)."""
    if fill_ratio < 0.36:
        return "star"
    if fill_ratio < 0.64:
        return "triangle" if centroid_height > 0.61 else "star"
    if fill_ratio < 0.89:
        return "circle"
    return "square"


def analyse(image) -> Analysis:
    """Reads background colour, shape colour, shape class and position from a 64×64 image."""
    a = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image,
                   dtype=np.float32)
    if a.shape[:2] != (SIZE, SIZE):
        a = np.asarray(Image.fromarray(a.clip(0, 255).astype(np.uint8)).resize(
            (SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float32)
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = nearest_colour(bg_rgb)
    dist_bg = np.linalg.norm(a - bg_rgb, axis=-1)
    candidates = dist_bg > 45
    if candidates.sum() < 6:
        return Analysis(background, None, None, None, 0, 0.0, None)
    cand = _largest_component(candidates)
    # the colour from the shape's inner half (the pixels least like the background): a thin
    # star's anti-aliased or blurred rim, blended with the background, would pull it grey
    inner = cand & (dist_bg >= np.median(dist_bg[cand]))
    shape_rgb = np.median(a[inner], axis=0)
    dist_shape = np.linalg.norm(a - shape_rgb, axis=-1)
    mask = _largest_component((dist_shape < dist_bg) & (dist_bg > 25))
    area = int(mask.sum())
    if area < 6:
        return Analysis(background, None, None, None, area, 0.0, None)
    ys, xs = np.nonzero(mask)
    bbox = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1)
    fill = float(area / bbox)
    cx, cy = float(xs.mean()), float(ys.mean())
    rel_cy = (cy - ys.min() + 0.5) / (ys.max() - ys.min() + 1)
    return Analysis(background, nearest_colour(shape_rgb), shape_of(fill, rel_cy),
                    position_of(cx, cy), area, fill, (cx, cy))


def score(caption: Caption, analysis: Analysis) -> dict[str, bool | None]:
    """Per attribute the caption names: did the image get it right (None = not named)."""
    def check(want, got):
        return None if want is None else (want == got)
    pos = caption.position
    return {
        "colour": check(caption.colour, analysis.colour),
        "shape": check(caption.shape, analysis.shape),
        "position": check(pos, analysis.position),
        "background": check(caption.background, analysis.background),
    }


def scene_caption(scene: Scene) -> Caption:
    return Caption(scene.colour, scene.shape, scene.size, scene.position, scene.background)


__all__ = ["COLOURS", "SHAPES", "SIZES", "POSITIONS", "HELD_OUT", "Scene", "Caption",
           "Analysis", "parse_caption", "random_scene", "render", "random_caption",
           "make_dataset", "analyse", "score", "scene_caption", "replace"]
