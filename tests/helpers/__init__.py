"""Shared test helpers: tiny random-weight diffusion models and checkpoint layout converters."""
