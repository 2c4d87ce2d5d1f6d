"""rge-demo: an interactive demo and inspection app for Reasoning Guided Embeddings (arXiv 2511.16150)."""

__version__ = "0.1.0"
