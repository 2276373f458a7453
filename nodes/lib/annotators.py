"""Control images made from pictures with OpenCV, no model weights needed: canny edges and
content shuffle. (Depth, pose, HED/soft edges, line art, MLSD lines, normals and segmentation
need neural annotators whose weights would have to be downloaded; Loom leaves them out.)"""

from __future__ import annotations

import numpy as np
import torch

from nodes.lib.images import image_to_uint8


def canny(image: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """IMAGE -> IMAGE of Canny edges (1 = edge), the three channels alike. The image is taken
    to 8 bits first (rounded, as a saved PNG would be), as OpenCV's Canny and the canny
    ControlNets' training data expect; on colour it follows the strongest channel's gradient."""
    import cv2

    out = []
    for arr in image_to_uint8(image):
        edges = cv2.Canny(np.ascontiguousarray(arr), low, high)
        out.append(torch.from_numpy(edges.astype(np.float32) / 255.0))
    return torch.stack(out)[:, None].repeat(1, 3, 1, 1)


def _smooth_field(gen: torch.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """A smooth random field over height x width in 0..1: uniform values on a grid `cell`
    pixels apart, interpolated bicubically."""
    import cv2

    grid = torch.rand(height // cell + 2, width // cell + 2, generator=gen,
                      dtype=torch.float64).numpy()
    field = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    field -= field.min()
    top = field.max()
    return field / top if top > 0 else field


def content_shuffle(image: torch.Tensor, seed: int, cell: int = 256) -> torch.Tensor:
    """Resample each image at the points of a smooth random flow (each output pixel reads the
    input at a random, smoothly varying place): colours and textures stay, the layout goes.
    Seeded, so the same seed gives the same shuffle on any machine."""
    import cv2

    gen = torch.Generator("cpu").manual_seed(int(seed))
    out = []
    for img in image.detach().float().cpu():
        h, w = img.shape[-2:]
        map_x = (_smooth_field(gen, h, w, cell) * (w - 1)).astype(np.float32)
        map_y = (_smooth_field(gen, h, w, cell) * (h - 1)).astype(np.float32)
        hwc = np.ascontiguousarray(img.permute(1, 2, 0).numpy())
        warped = cv2.remap(hwc, map_x, map_y, interpolation=cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_REFLECT)
        out.append(torch.from_numpy(np.ascontiguousarray(warped)).permute(2, 0, 1))
    return torch.stack(out).clamp(0, 1)
