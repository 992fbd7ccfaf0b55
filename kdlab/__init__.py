"""kdlab: distil language models and measure what transfers (accuracy and fidelity)."""

__version__ = "0.1.0"
