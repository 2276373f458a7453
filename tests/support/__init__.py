"""Helpers shared by the engine tests (pure Python: no torch, no Qt)."""
