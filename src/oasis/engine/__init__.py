"""Inference engines: tokens in, token events out. Knows nothing of HTTP."""
