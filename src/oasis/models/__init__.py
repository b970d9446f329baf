"""The model registry: which models are served, under which names."""
