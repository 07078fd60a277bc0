"""flower-model: a flower photo classifier whose whole life is one reproducible DVC pipeline."""

__version__ = "0.1.0"
