"""htr_lightning: PyTorch Lightning modules for handwritten text recognition of text lines."""

__version__ = "0.1.0"
