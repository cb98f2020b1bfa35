"""Plain nn.Modules (no Lightning, no charset, no loss)."""

from htr_lightning.nets.best_practices import BestPracticesCRNN
from htr_lightning.nets.gated_crnn import GatedCRNN
from htr_lightning.nets.mobilevit import MobileViTBlock
from htr_lightning.nets.qformer import QFormerConnector

__all__ = ["BestPracticesCRNN", "GatedCRNN", "MobileViTBlock", "QFormerConnector"]
