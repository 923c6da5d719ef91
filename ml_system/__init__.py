"""ml_system: the production loop of an ML model on one Ray cluster."""

__version__ = "0.1.0"
