"""oasis: a self-hosted, OpenAI-compatible API server on real local models."""

__version__ = "0.1.0"
