"""Loom's node types, one module per family. Modules here keep torch/diffusers imports inside
functions (or in `nodes.lib`, imported lazily) so that discovering node types loads no torch."""

import nodes._types  # noqa: F401  (registers the socket types)
