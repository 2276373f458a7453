"""The example plugin's node types.

Rules a plugin follows, as Loom's own node modules do:
- import only Loom's node API (`engine.node`, `engine.types`, `engine.errors`) at module level,
  and heavy libraries (torch, numpy, PIL) inside `run`, so listing node types stays fast;
- give each type an id of its own family ("example.*"): an id that Loom or another plugin
  already declares is refused at start-up (the error names both packages);
- version every type (MAJOR.MINOR.PATCH) and add a migration when its inputs change;
- never change a value you were given in place (cached values are shared): return new ones.
"""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.types import INT, STRING

IMAGE = "IMAGE"  # Loom's image type: float [B, 3, H, W] in 0..1


@node("example.invert", title="Invert Image", category="example", version="1.0.0",
      outputs=[Output("image", IMAGE)])
class InvertImage:
    """The negative of an image: 1 - each channel."""

    image = Input(IMAGE)

    def run(self, ctx: RunContext):
        return 1.0 - self.image  # a new tensor: the input stays as it was


@node("example.posterize", title="Posterize", category="example", version="1.0.0",
      outputs=[Output("image", IMAGE)])
class Posterize:
    """Reduce each channel to `levels` values (2 = pure colours)."""

    image = Input(IMAGE)
    levels = Input(INT, default=4, min=2, max=256)

    def run(self, ctx: RunContext):
        steps = self.levels - 1
        return (self.image.clamp(0.0, 1.0) * steps).round() / steps


@node("example.prompt_template", title="Prompt Template", category="example",
      version="1.0.0", outputs=[Output("text", STRING)])
class PromptTemplate:
    """Put a subject into a template: "{subject}" in the template is replaced."""

    subject = Input(STRING, default="a lighthouse")
    template = Input(STRING, default="{subject}, oil painting, warm light", multiline=True)

    def run(self, ctx: RunContext):
        if "{subject}" not in self.template:
            raise NodeInputError("template", "the template has no {subject} to replace")
        return self.template.replace("{subject}", self.subject)
