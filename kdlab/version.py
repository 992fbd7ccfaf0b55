"""The kdlab version (one home; ``kdlab.__version__`` re-exports it)."""

__version__ = "0.1.0"
