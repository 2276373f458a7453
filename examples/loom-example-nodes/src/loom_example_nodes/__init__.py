"""An example Loom node plugin (see nodes.py)."""

__version__ = "1.0.0"
