"""The llama.cpp engine: one thread owns the context and decodes every active sequence per step."""

from oasis.engine.llamacpp.engine import LlamaEngine

__all__ = ["LlamaEngine"]
