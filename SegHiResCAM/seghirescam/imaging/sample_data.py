"""Where the real abdominal CT used by training, evaluation and the tests lives.

The CT (TotalSegmentator's example, Apache-2.0; labels 2 = right kidney, 3 = left kidney) is not
shipped with the package. It is looked for in ``$SEGHIRESCAM_DATA/ct-abdomen-totalseg`` and then
in ``shared/data/ct-abdomen-totalseg`` beside the repository checkout (``../shared/data``).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["REAL_CT_FOLDER", "real_ct_dir", "DATA_ENV"]

DATA_ENV = "SEGHIRESCAM_DATA"
REAL_CT_FOLDER = "ct-abdomen-totalseg"


def real_ct_dir() -> Path:
    """The folder of the real CT (``example_ct.nii.gz``, ``example_seg.nii.gz``), existing or not.

    Returns:
        ``$SEGHIRESCAM_DATA/ct-abdomen-totalseg`` when the variable is set, else
        ``<checkout>/../shared/data/ct-abdomen-totalseg``.
    """
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]) / REAL_CT_FOLDER
    checkout = Path(__file__).resolve().parents[3]  # imaging -> seghirescam -> SegHiResCAM -> checkout
    return checkout.parent / "shared" / "data" / REAL_CT_FOLDER
