"""Conditioning for models that take no text: a class label (class-conditional UNet2DModels)
or nothing (unconditional ones), as CONDITIONING values CFG Combine can guide."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.types import INT, STRING
from nodes._types import CONDITIONING, MODEL


@node("conditioning.class_label", title="Class Label", category="conditioning",
      version="1.0.0",
      outputs=[Output("conditioning", CONDITIONING, "the class to generate: CFG Combine's "
                                                    "positive"),
               Output("null", CONDITIONING, "the null class (no label): CFG Combine's negative, "
                                            "to guide the class against")])
class ClassLabelNode:
    """Which class a class-conditional model (Load Pixel Model) generates, by index or by the
    name its folder lists. Classifier-free guidance needs an "unconditional" prediction: models
    trained with label dropout learn it as one extra class, the null class, which Loom's
    training script puts last (index num_classes - 1)."""

    model = Input(MODEL, description="a class-conditional model (its classes and names)")
    label = Input(STRING, default="0",
                  description="a class index ('3') or a name from the model folder's "
                              "class_names.json ('red circle')")
    null_label = Input(INT, default=-1, min=-1, max=1_000_000,
                       description="the null (unconditional) class index; -1 = the last "
                                   "class, the training script's convention")

    def run(self, ctx: RunContext):
        import torch

        from nodes.lib.bundles import Conditioning
        from nodes.lib.pixel import parse_label

        n = int((self.model.extra or {}).get("num_classes") or 0)
        if n == 0:
            raise NodeInputError("model", "is not class-conditional (its UNet has no class "
                                 "embeddings); use Unconditional")
        try:
            index = parse_label(self.label, self.model)
        except ValueError as exc:
            raise NodeInputError("label", str(exc)) from None
        null = n - 1 if self.null_label == -1 else int(self.null_label)
        if null >= n:
            raise NodeInputError("null_label", f"{null} is out of range: the model has {n} "
                                 f"classes (0..{n - 1}; -1 = the last)")
        ctx.set_ui(label=index, null_label=null)

        def cond(i: int) -> Conditioning:
            return Conditioning(None, family=self.model.family,
                                class_labels=torch.tensor([i], dtype=torch.long))

        return cond(index), cond(null)


@node("conditioning.unconditional", title="Unconditional", category="conditioning",
      version="1.0.0",
      outputs=[Output("conditioning", CONDITIONING, "no conditioning: CFG Combine's positive "
                                                    "(scale 1) for an unconditional model")])
class UnconditionalNode:
    """No conditioning at all, for models that take none (unconditional DDPM models: CIFAR-10,
    CelebA-HQ, churches): connect it to CFG Combine's positive with scale 1."""

    def run(self, ctx: RunContext):
        from nodes.lib.bundles import Conditioning

        return Conditioning(None, family="pixel")
