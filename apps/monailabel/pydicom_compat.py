"""The one workaround monailabel 0.8.5 needs to start beside pydicom 3 (docs/SERVING.md, "MONAI Label").

monailabel's DICOM datastore imports ``pydicom_seg`` 0.4.1, which imports ``pydicom._storage_sopclass_uids``, a
private module of pydicom 2 that pydicom 3 folded into ``pydicom.uid`` (same names). Aliasing it before
``monailabel.app`` is imported lets the server start; only DICOM-SEG output, which a classifier does not write, is
affected. Upstream replaced pydicom-seg by highdicom after 0.8.5; drop this module once a release has that.
"""

from __future__ import annotations

import sys

PRIVATE_MODULE = "pydicom._storage_sopclass_uids"


def apply() -> None:
    """Make ``pydicom._storage_sopclass_uids`` importable (as ``pydicom.uid``) when pydicom lacks it."""
    if PRIVATE_MODULE in sys.modules:
        return
    try:
        __import__(PRIVATE_MODULE)
    except ImportError:
        import pydicom.uid

        sys.modules[PRIVATE_MODULE] = pydicom.uid
