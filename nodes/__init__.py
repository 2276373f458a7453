"""Loom's node types, one module per family. Modules here keep torch/diffusers imports inside
functions (or in `nodes.lib`, imported lazily) so that discovering node types loads no torch."""

import nodes._types  # noqa: F401  (registers the socket types)
from engine.integrity import register_fingerprinter
from engine.library import register_describer

# torch values, fingerprinted by nodes.lib.fingerprints (imported only when the check meets one)
register_fingerprinter("torch.Tensor", "nodes.lib.fingerprints:tensor")
register_fingerprinter("torch.nn.modules.module.Module", "nodes.lib.fingerprints:module")

# what a model file in the library is (family from its header; no torch): engine.library
register_describer("nodes.lib.model_info:describe")
