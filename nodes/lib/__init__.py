"""Implementation helpers for the node modules (torch, diffusers, transformers live here)."""
