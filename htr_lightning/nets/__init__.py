"""Plain nn.Modules (no Lightning, no charset, no loss)."""

from htr_lightning.nets.gated_crnn import GatedCRNN

__all__ = ["GatedCRNN"]
