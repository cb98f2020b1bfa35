"""htr_lightning: PyTorch Lightning modules for handwritten text recognition of text lines."""
