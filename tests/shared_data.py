"""Where the real handwriting of ``../shared/data`` is, for the tests that use it when present.

``HTR_LIGHTNING_DATA`` names the folder holding ``hooker/``; without it, the ``shared/data``
folder beside the repository is used. Tests that need it skip when it is absent.
"""

import os
from pathlib import Path

DATA = Path(os.environ.get("HTR_LIGHTNING_DATA")
            or Path(__file__).resolve().parents[2] / "shared" / "data")
HOOKER = DATA / "hooker"
