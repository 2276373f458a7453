"""Images and masks: load, save, preview, resize, crop."""

from __future__ import annotations

from pathlib import Path

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.paths import resolve_path
from engine.types import BOOLEAN, INT, STRING
from nodes._types import IMAGE, MASK

_IMAGES = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff)"
_METHODS = ("lanczos", "bicubic", "bilinear", "nearest")


def _open(ctx: RunContext, value: str, input: str):
    from nodes.lib.images import open_image

    if not value:
        raise NodeInputError(input, "choose an image file")
    path = resolve_path(value, ctx.options)
    if not path.is_file():
        raise NodeInputError(input, f"no such file: {path}")
    try:
        return open_image(path)
    except OSError as exc:
        raise NodeInputError(input, f"cannot read {path.name} as an image: {exc}") from None


@node("image.load", title="Load Image", category="image", version="1.0.0",
      outputs=[Output("image", IMAGE), Output("mask", MASK, "transparent pixels (1 = repaint); "
                                                          "all zeros without alpha")])
class LoadImageNode:
    """An image file as IMAGE (RGB, 0..1), with its alpha channel as a mask."""

    image = Input(STRING, default="", widget="image", file_filter=_IMAGES, path=True)

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: the image file exists, is an image, and fits in memory."""
        from nodes._limits import image_file_problems

        return image_file_problems(values.get("image"), ctx, "image")

    def run(self, ctx: RunContext):
        import torch

        from nodes.lib.images import alpha_mask, pil_to_image

        img = _open(ctx, self.image, "image")
        image = pil_to_image(img)
        mask = alpha_mask(img)
        if mask is None:
            mask = torch.zeros(1, 1, image.shape[2], image.shape[3])
        return image, mask


@node("image.load_mask", title="Load Mask", category="image", version="1.0.0",
      outputs=[Output("mask", MASK)])
class LoadMaskNode:
    """A mask from an image file: white (or transparent, for "alpha") = repaint."""

    image = Input(STRING, default="", widget="mask", file_filter=_IMAGES, path=True)
    channel = Input(STRING, default="luminance",
                    choices=("luminance", "alpha", "red", "green", "blue"))
    invert = Input(BOOLEAN, default=False)

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: the image file exists, is an image, and fits in memory."""
        from nodes._limits import image_file_problems

        return image_file_problems(values.get("image"), ctx, "image")

    def run(self, ctx: RunContext):
        from nodes.lib.images import channel_mask

        img = _open(ctx, self.image, "image")
        try:
            mask = channel_mask(img, self.channel)
        except ValueError as exc:
            raise NodeInputError("channel", f"{exc}; choose another channel") from None
        return 1.0 - mask if self.invert else mask


@node("image.save", title="Save Image", category="image", version="1.0.0", output_node=True)
class SaveImageNode:
    """Write PNGs numbered prefix_00001.png, ... into the output folder, with the workflow
    embedded (drop the PNG on Loom to get the graph back)."""

    images = Input(IMAGE)
    prefix = Input(STRING, default="loom", description="file name prefix (no folders)")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: a plain prefix, and an output folder that can be written."""
        from engine.preflight import file_output_problems

        return file_output_problems(values, ctx)

    def run(self, ctx: RunContext):
        # Each PNG appears under its name only when complete and never replaces a file
        # (engine/files.py). One that would be larger with the workflow than Loom can open
        # again (engine.workflow.MAX_FILE_BYTES) is saved without it and ui["warnings"] says
        # so: the image is the expensive part, and the workflow can still be saved as .json.
        from engine import workflow as wf
        from engine.files import check_prefix, write_numbered
        from nodes.lib.images import encode_png_within, image_to_uint8

        why = check_prefix(self.prefix)
        if why is not None:
            raise NodeInputError("prefix", why)
        out_dir = Path(ctx.options.get("output_dir", "out"))
        text = {}
        workflow = ctx.options.get("workflow_json")
        if workflow:
            text[wf.PNG_KEY] = workflow
        arrays = image_to_uint8(self.images)
        files, warnings = [], []
        try:
            for a in arrays:
                data, dropped = encode_png_within(a, text, wf.MAX_FILE_BYTES, (wf.PNG_KEY,))
                path = write_numbered(out_dir, self.prefix, ".png", data)
                files.append(str(path))
                if dropped:
                    warnings.append(f"{path.name} was saved without its workflow: with it the "
                                    f"PNG would be larger than the {wf.MAX_FILE_BYTES} bytes "
                                    "Loom can open; save the workflow as a .json file instead")
        except BaseException:
            if files:  # a later image failed (a full disk): the ones written are still reported
                ctx.set_ui(files=files)
            raise
        ctx.set_ui(files=files, images=arrays)
        if warnings:
            ctx.set_ui(warnings=warnings)


@node("image.preview", title="Preview Image", category="image", version="1.0.0",
      output_node=True)
class PreviewImageNode:
    """Show images in the editor without saving them."""

    images = Input(IMAGE)

    def run(self, ctx: RunContext):
        from nodes.lib.images import image_to_uint8

        ctx.set_ui(images=image_to_uint8(self.images))


@node("image.resize", title="Resize Image", category="image", version="1.0.0",
      outputs=[Output("image", IMAGE)])
class ResizeImageNode:
    """Resize to an exact size."""

    image = Input(IMAGE)
    width = Input(INT, default=512, min=1, max=16384)
    height = Input(INT, default=512, min=1, max=16384)
    method = Input(STRING, default="lanczos", choices=_METHODS)

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: the resized image (per image of the batch) fits in memory."""
        from nodes._limits import pixels_problem

        w, h = values.get("width"), values.get("height")
        if isinstance(w, int) and isinstance(h, int):
            problem = pixels_problem("a resized image", w, h, 1, 3, "width")
            if problem is not None:
                yield problem

    def run(self, ctx: RunContext):
        from nodes.lib.images import resize_image

        return resize_image(self.image, int(self.width), int(self.height), self.method)


@node("image.crop", title="Crop Image", category="image", version="1.0.0",
      outputs=[Output("image", IMAGE)])
class CropImageNode:
    """Cut a rectangle out of an image (x, y = its top-left corner)."""

    image = Input(IMAGE)
    x = Input(INT, default=0, min=0, max=16384)
    y = Input(INT, default=0, min=0, max=16384)
    width = Input(INT, default=512, min=1, max=16384)
    height = Input(INT, default=512, min=1, max=16384)

    def run(self, ctx: RunContext):
        h, w = self.image.shape[-2:]
        if self.x + self.width > w:
            raise NodeInputError("width", f"x {self.x} + width {self.width} is beyond the "
                                 f"image's width {w}")
        if self.y + self.height > h:
            raise NodeInputError("height", f"y {self.y} + height {self.height} is beyond the "
                                 f"image's height {h}")
        return self.image[..., self.y:self.y + self.height, self.x:self.x + self.width].clone()


@node("mask.resize", title="Resize Mask", category="image", version="1.0.0",
      outputs=[Output("mask", MASK)])
class ResizeMaskNode:
    """Resize a mask to an exact size (e.g. to match an image)."""

    mask = Input(MASK)
    width = Input(INT, default=512, min=1, max=16384)
    height = Input(INT, default=512, min=1, max=16384)
    method = Input(STRING, default="nearest", choices=_METHODS)

    def run(self, ctx: RunContext):
        from nodes.lib.images import resize_mask

        return resize_mask(self.mask, int(self.width), int(self.height), self.method)


@node("mask.invert", title="Invert Mask", category="image", version="1.0.0",
      outputs=[Output("mask", MASK)])
class InvertMaskNode:
    """Swap what is repainted and what is kept."""

    mask = Input(MASK)

    def run(self, ctx: RunContext):
        return 1.0 - self.mask


@node("image.composite", title="Composite Through Mask", category="image", version="1.0.0",
      outputs=[Output("image", IMAGE)])
class CompositeNode:
    """Paste `image` over `base` where the mask is 1, keep `base` where it is 0 (the last step of
    inpainting: the pixels outside the mask stay exactly the original). `feather` softens the
    mask edge by that many pixels so the seam does not show."""

    base = Input(IMAGE, description="the original picture (kept where the mask is 0)")
    image = Input(IMAGE, description="the generated picture (used where the mask is 1)")
    mask = Input(MASK)
    feather = Input(INT, default=2, min=0, max=256)

    def run(self, ctx: RunContext):
        import torch
        import torch.nn.functional as F

        from nodes.lib.images import resize_mask

        base, image = self.base, self.image
        if base.shape[-2:] != image.shape[-2:]:
            raise NodeInputError("base", f"base is {base.shape[-1]}×{base.shape[-2]} but image "
                                 f"is {image.shape[-1]}×{image.shape[-2]}; resize one first")
        mask = self.mask.to(image.device, torch.float32)
        if mask.shape[-2:] != image.shape[-2:]:
            mask = resize_mask(mask, image.shape[-1], image.shape[-2], "bilinear")
        r = int(self.feather)
        if r > 0:  # a box blur of the mask, the kept side staying kept at the far edge
            k = 2 * r + 1
            mask = F.avg_pool2d(F.pad(mask, (r, r, r, r), mode="replicate"), k, stride=1)
        n = max(base.shape[0], image.shape[0], mask.shape[0])
        for name, t in (("base", base), ("image", image), ("mask", mask)):
            if n % t.shape[0]:
                raise NodeInputError(name, f"a batch of {t.shape[0]} does not match {n}")
        base = base.to(image.device, image.dtype).repeat(n // base.shape[0], 1, 1, 1)
        image = image.repeat(n // image.shape[0], 1, 1, 1)
        mask = mask.to(image.dtype).repeat(n // mask.shape[0], 1, 1, 1)
        return base * (1 - mask) + image * mask
