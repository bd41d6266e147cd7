"""The HTTP edge: OpenAI-compatible API on Ray Serve, settings, CLI."""

__version__ = "0.1.0"

__all__ = ["__version__"]
