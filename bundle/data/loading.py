"""Data loader helpers."""

from __future__ import annotations

from monai.data import set_track_meta
from monai.data.utils import worker_init_fn


def plain_tensor_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for training loaders: MONAI's per-worker transform seeding, then MetaTensor tracking off.

    The training engines read no metadata, and random transforms on plain tensors skip MetaTensor's bookkeeping
    (docs/RESULTS.md, "Speed"). Only the worker processes are affected: evaluation and inference, which need the
    metadata, run in the main process or their own loaders.
    """
    worker_init_fn(worker_id)
    set_track_meta(False)
