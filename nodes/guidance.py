"""Guidance beyond CFG, for any model (nodes.lib.guidance says how and why):
- Loss Guidance: steer sampling towards images with a lower differentiable loss (a colour, a
  brightness, a reference image), by the gradient of the loss on the predicted clean image.
  Losses are nodes of their own (LOSS edges), so a new one needs no change to the guidance.
- Classifier Guidance (Dhariwal & Nichol): the gradient of log p(class | noisy sample) from a
  noise-aware classifier (Load Noise-Aware Model), added to the prediction.
- CLIP Guidance (GLIDE): the gradient of a noise-aware CLIP's similarity between the noisy
  sample and the prompt's encoding, added to the prediction."""

from __future__ import annotations

from engine.errors import NodeInputError
from engine.node import Input, Output, RunContext, node
from engine.types import FLOAT, STRING
from nodes._loading import existing_model_path
from nodes._types import CONDITIONING, GUIDED_DENOISER, IMAGE, LOSS, NOISY_MODEL, VAE

DEFAULT_SCALE = 1.0
"""The Colour / Loss Guidance default: with Loom's built-in model, #0000FF (mean mode, guided
up to 0.8) at this scale raised the mean blue share of 64 images from 0.246 to 0.282 while the
analyser read the prompt's shape in 55 of them against 53 unguided; 1.5 read 49, 4 read fewer
still (benchmarks/bench_colour_guidance.py measures it)."""
DEFAULT_END = 0.8
DEFAULT_CLIP_SCALE = 3.0
"""CLIP Guidance's default: with loom-clip on the built-in model at CFG 1 (32 held-in prompts x
4 seeds, tools/builtin/compare_guidance.py), 3 read the prompt's colour in 96.9 % of images
(unguided 82.8 %, CFG 5 93.0 %) and its shape in 75.8 % (68.8 %, 76.6 %); 10 gained position
(94.5 %) but lost shape (71.1 %); 30 lost colour, shape and background."""


def _scale() -> Input:
    return Input(FLOAT, default=DEFAULT_SCALE, min=0.0, max=100.0, step=0.01,
                 description="how far each guided step moves the predicted image down the "
                             "loss's gradient (0 = no guidance: exactly the unguided image)")


def _start() -> Input:
    return Input(FLOAT, default=0.0, min=0.0, max=1.0, step=0.05,
                 description="guide from this point of the denoising on (0 = pure noise)")


def _end() -> Input:
    return Input(FLOAT, default=DEFAULT_END, min=0.0, max=1.0, step=0.05,
                 description="guide up to this point (1 = the clean image); the last steps "
                             "unguided keep the details the model draws")


def _vae() -> Input:
    return Input(VAE, optional=True, connection_only=True,
                 description="a latent model's VAE, through which the loss sees the image "
                             "(required for latent models; not for pixel models)")


def _colour_mode() -> Input:
    return Input(STRING, default="mean", choices=("mean", "pixels"),
                 description="'mean': the image's mean colour towards the target (a colour "
                             "cast that keeps the picture's contrast); 'pixels': every pixel "
                             "towards it (flattens the picture towards a plain fill)")


def _guide(node, ctx: RunContext, loss):
    """The LossGuidedDenoiser for a guidance node's inputs, with errors naming them."""
    from nodes.lib.guidance import LossGuidedDenoiser, is_pixel_model

    if not getattr(node.denoiser, "guided", False):
        raise NodeInputError("denoiser", "connect a guided denoiser (CFG Combine)")
    if node.start > node.end:
        raise NodeInputError("start", f"the guidance interval starts ({node.start}) after it "
                             f"ends ({node.end})")
    pixel = is_pixel_model(node.denoiser.model)
    if pixel and node.vae is not None:
        raise NodeInputError("vae", "this is a pixel-space model: its samples are the image, "
                             "so no VAE is used; disconnect it")
    if not pixel and node.vae is None:
        raise NodeInputError("vae", "this latent model's samples are not an image: connect its "
                             "VAE so the loss can see the decoded image")
    return LossGuidedDenoiser(node.denoiser, loss, node.scale, node.start, node.end, node.vae)


@node("guidance.loss_guidance", title="Loss Guidance", category="guidance", version="1.0.0",
      outputs=[Output("denoiser", GUIDED_DENOISER, "the denoiser with the loss's pull added, "
                                                   "for the Sampler (or more guidance)")])
class LossGuidanceNode:
    """Pull sampling towards images with a lower loss (Colour / Brightness / Image Similarity
    Loss): at every step within [start, end] the predicted clean image takes one gradient step
    down the loss, and the prediction is changed to match, so every scheduler follows it. Costs
    one VAE decode forward and backward per guided step (none for a pixel model)."""

    denoiser = Input(GUIDED_DENOISER, description="a guided denoiser (CFG Combine)")
    loss = Input(LOSS, description="what to lower: a Colour, Brightness or Image Similarity Loss")
    scale = _scale()
    start = _start()
    end = _end()
    vae = _vae()

    def run(self, ctx: RunContext):
        return _guide(self, ctx, self.loss)


@node("guidance.colour", title="Colour Guidance", category="guidance", version="1.0.0",
      outputs=[Output("denoiser", GUIDED_DENOISER, "the denoiser pulled towards the colour, "
                                                   "for the Sampler")])
class ColourGuidanceNode:
    """Loss Guidance with a Colour Loss built in, in one node: pull the image towards a colour
    ("towards blue": #0000FF)."""

    denoiser = Input(GUIDED_DENOISER, description="a guided denoiser (CFG Combine)")
    color = Input(STRING, default="#0000FF", description="the target colour, #RRGGBB")
    mode = _colour_mode()
    scale = _scale()
    start = _start()
    end = _end()
    vae = _vae()

    def run(self, ctx: RunContext):
        return _guide(self, ctx, _colour_loss(self.color, self.mode))


def _colour_loss(text: str, mode: str):
    from nodes.lib.guidance import ColourLoss, parse_colour

    try:
        return ColourLoss(parse_colour(text), mode)
    except ValueError as exc:
        raise NodeInputError("color", str(exc)) from None


@node("guidance.colour_loss", title="Colour Loss", category="guidance", version="1.0.0",
      outputs=[Output("loss", LOSS, "squared distance of the image's colour to the target")])
class ColourLossNode:
    """How far an image is from a colour (squared RGB distance on a 0..1 scale, of its mean
    colour or of every pixel): Loss Guidance with it makes images of that colour."""

    color = Input(STRING, default="#0000FF", description="the target colour, #RRGGBB")
    mode = _colour_mode()

    def run(self, ctx: RunContext):
        return _colour_loss(self.color, self.mode)


@node("guidance.brightness_loss", title="Brightness Loss", category="guidance",
      version="1.0.0",
      outputs=[Output("loss", LOSS, "squared difference of the mean luma to the target")])
class BrightnessLossNode:
    """How far an image's mean brightness (Rec. 709 luma) is from a target: Loss Guidance with
    it brightens or darkens images without choosing their colours."""

    target = Input(FLOAT, default=0.8, min=0.0, max=1.0, step=0.05, widget="slider",
                   description="the mean brightness to reach: 0 black, 1 white")

    def run(self, ctx: RunContext):
        from nodes.lib.guidance import BrightnessLoss

        return BrightnessLoss(float(self.target))


@node("guidance.image_similarity_loss", title="Image Similarity Loss", category="guidance",
      version="1.0.0",
      outputs=[Output("loss", LOSS, "mean squared difference to the reference image")])
class ImageSimilarityLossNode:
    """How different an image is from a reference (mean squared pixel difference; the
    reference is resized to the generated size): Loss Guidance with it draws the layout and
    colours of the reference."""

    image = Input(IMAGE, description="the reference: one image, or one per generated image")

    def run(self, ctx: RunContext):
        from nodes.lib.guidance import ImageSimilarityLoss

        if self.image.ndim != 4 or self.image.shape[1] != 3:
            raise NodeInputError("image", f"expected an RGB image [batch, 3, H, W], got shape "
                                 f"{tuple(self.image.shape)}")
        return ImageSimilarityLoss(self.image.detach().float().cpu())


# ---- noise-aware models: classifier guidance ---------------------------------------------------


@node("loaders.noisy_model", title="Load Noise-Aware Model", category="loaders",
      version="1.0.0",
      outputs=[Output("model", NOISY_MODEL, "the noise-aware classifier or CLIP, for "
                                            "Classifier / CLIP Guidance"),
               Output("classes", STRING, "a classifier's classes, one 'index: name' a line")])
class LoadNoisyModelNode:
    """Load a noise-aware model folder (config.json + model.safetensors, as Loom's training
    scripts write them): a classifier or a CLIP image tower trained on *noisy* samples, so its
    gradient means something from the first, noisiest step. Each reads one kind of sample
    (a pixel model's images, or one VAE's latents), which its folder records."""

    path = Input(STRING, default="", path=True, widget="folder", library="checkpoints",
                 description="a noise-aware model folder (config.json, model.safetensors)")

    @classmethod
    def preflight(cls, values, ctx):
        """Before anything runs: the folder's config names a kind Loom knows (no weights)."""
        from nodes._loading import path_config_preflight

        def problem(path, _config):
            from nodes.lib.noisy_models import NoisyModelError, read_folder

            try:
                read_folder(path)
            except NoisyModelError as exc:
                return "path", str(exc)
            return None

        return path_config_preflight(values, ctx, "checkpoints",
                                     "choose a noise-aware model folder", problem)

    def run(self, ctx: RunContext):
        from nodes.lib.noisy_models import NoisyModelError, load_noisy_model

        path = existing_model_path(self.path, ctx.options, "checkpoints",
                                   "choose a noise-aware model folder")
        try:
            bundle = load_noisy_model(path, device=ctx.device)
        except (NoisyModelError, OSError, RuntimeError) as exc:
            raise NodeInputError("path", str(exc)) from exc
        names = bundle.class_names
        ctx.set_ui(kind=bundle.kind, space=bundle.space.kind, classes=len(names))
        return bundle, "\n".join(f"{i}: {n}" for i, n in enumerate(names))


def check_space(denoiser, noisy, input_name: str = "model") -> None:
    """NodeInputError on `input_name` when the noise-aware model cannot read the samples of
    the denoiser's model (pixels vs latents, channels)."""
    from nodes.latents import _latent_channels
    from nodes.lib.guidance import is_pixel_model
    from nodes.lib.noisy_models import space_problem
    from nodes.pixel import pixel_channels

    model = denoiser.model
    pixel = is_pixel_model(model)
    channels = pixel_channels(model) if pixel else _latent_channels(model)
    problem = space_problem(noisy.space, channels, pixel)
    if problem is not None:
        raise NodeInputError(input_name, f"this noise-aware model {problem}")


CLASSIFIER_SCALE = 2.0
"""The Classifier Guidance default: with Loom's class model and its noise-aware classifier
(resources/models/loom-classifier), the class label at CFG scale 1 plus the classifier at
this scale drew 80 of 80 images of the right class (10 classes x 8 seeds) against 69 unguided
and 80 with CFG 2; 1 drew 78, 3 drew 73, 5 fewer still (tools/builtin/evaluate_classes.py
--classifier-scales)."""


def check_score_inputs(node, model_input: str, kind: str, what: str) -> None:
    """The checks Classifier and CLIP Guidance share, with errors naming the input: a guided
    denoiser, a noise-aware model of `kind` (`what`) that reads this model's samples, and an
    interval that starts before it ends."""
    if not getattr(node.denoiser, "guided", False):
        raise NodeInputError("denoiser", "connect a guided denoiser (CFG Combine)")
    noisy = getattr(node, model_input)
    if noisy.kind != kind:
        raise NodeInputError(model_input, f"is a {noisy.kind}, not {what}")
    check_space(node.denoiser, noisy, model_input)
    if node.start > node.end:
        raise NodeInputError("start", f"the guidance interval starts ({node.start}) after it "
                             f"ends ({node.end})")


def _score_scale(default: float) -> Input:
    return Input(FLOAT, default=default, min=0.0, max=1000.0, step=0.1,
                 description="the gradient's weight (0 = no guidance: exactly the unguided "
                             "image)")


def _score_end() -> Input:
    return Input(FLOAT, default=1.0, min=0.0, max=1.0, step=0.05,
                 description="guide up to this point (1 = the clean image)")


@node("guidance.classifier", title="Classifier Guidance", category="guidance",
      version="1.0.0",
      outputs=[Output("denoiser", GUIDED_DENOISER, "the denoiser pulled towards the class, "
                                                   "for the Sampler (or more guidance)")])
class ClassifierGuidanceNode:
    """Classifier guidance (Dhariwal & Nichol 2021): at every step within [start, end] the
    gradient of log p(label | noisy sample) from a noise-aware classifier shifts the
    prediction, ε̂ = ε − scale·√(1−ᾱ)·∇ log p, towards samples the classifier reads as the
    label. Works on an unconditional model (the null class, CFG scale 1) or on top of CFG.
    Costs one classifier forward and backward per guided step."""

    denoiser = Input(GUIDED_DENOISER, description="a guided denoiser (CFG Combine)")
    classifier = Input(NOISY_MODEL, description="a noise-aware classifier (Load Noise-Aware "
                                                "Model) trained on this model's samples")
    label = Input(STRING, default="0",
                  description="the class to steer towards: an index or one of the "
                              "classifier's names ('red circle')")
    scale = _score_scale(CLASSIFIER_SCALE)
    start = _start()
    end = _score_end()

    def run(self, ctx: RunContext):
        from nodes.lib.guidance import ClassifierScore, ScoreGuidedDenoiser

        check_score_inputs(self, "classifier", "noisy_classifier", "a noise-aware classifier")
        from nodes.lib.pixel import parse_class

        names = self.classifier.class_names
        try:
            index = parse_class(self.label, len(names), names, "classifier")
        except ValueError as exc:
            raise NodeInputError("label", str(exc)) from None
        ctx.set_ui(label=index)
        return ScoreGuidedDenoiser(self.denoiser, ClassifierScore(self.classifier, index),
                                   self.scale, self.start, self.end)


# ---- noise-aware CLIP: GLIDE's CLIP guidance ----------------------------------------------------


@node("guidance.clip", title="CLIP Guidance", category="guidance", version="1.0.0",
      outputs=[Output("denoiser", GUIDED_DENOISER, "the denoiser pulled towards samples the "
                                                   "CLIP matches with the prompt, for the "
                                                   "Sampler (or more guidance)")])
class ClipGuidanceNode:
    """GLIDE's CLIP guidance: at every step within [start, end] the gradient of the CLIP
    score exp(logit_scale)·cos(f(x_t, σ), g(prompt)) of a noise-aware CLIP (one trained on
    noised samples, nodes.lib.noisy_clip) shifts the prediction, ε̂ = ε − scale·√(1−ᾱ)·∇,
    towards samples the CLIP reads as the prompt. GLIDE guides the conditional model this way
    (CFG scale 1) and finds classifier-free guidance better; both can be stacked. Costs one
    CLIP image-tower forward and backward per guided step."""

    denoiser = Input(GUIDED_DENOISER, description="a guided denoiser (CFG Combine; scale 1 for "
                                                  "CLIP guidance alone, as GLIDE)")
    clip = Input(NOISY_MODEL, description="a noise-aware CLIP (Load Noise-Aware Model) trained "
                                          "on this model's samples")
    prompt = Input(CONDITIONING, description="the prompt's encoding by the model's text "
                                             "encoder (the Text Encoder node's output): what "
                                             "the CLIP's text tower reads")
    scale = _score_scale(DEFAULT_CLIP_SCALE)
    start = _start()
    end = _score_end()

    def run(self, ctx: RunContext):
        from nodes.lib.guidance import ScoreGuidedDenoiser
        from nodes.lib.noisy_clip import KIND, ClipScore, text_hidden_size

        check_score_inputs(self, "clip", KIND, "a noise-aware CLIP (train one with "
                           "tools/builtin/train_clip.py)")
        embeds = getattr(self.prompt, "embeds", None)
        if embeds is None or embeds.ndim != 3:
            raise NodeInputError("prompt", "connect a text encoding (Text Encoder): this "
                                 "conditioning holds no token embeddings")
        width = text_hidden_size(self.clip.config)
        if embeds.shape[-1] != width:
            trained = (self.clip.config.get("trained_with") or {}).get("name", "its model")
            raise NodeInputError("prompt", f"the CLIP reads text encodings of width {width} "
                                 f"(trained with {trained}'s text encoder), this one has "
                                 f"width {embeds.shape[-1]}: encode the prompt with the text "
                                 "encoder the CLIP was trained with")
        if embeds.shape[0] != 1:
            raise NodeInputError("prompt", f"expected the encoding of one prompt, got a batch "
                                 f"of {embeds.shape[0]}")
        score = ClipScore(self.clip, embeds.detach().float())
        return ScoreGuidedDenoiser(self.denoiser, score, self.scale, self.start, self.end)
