"""Data loader helpers."""

from __future__ import annotations

from typing import Any

from monai.data import MetaTensor, set_track_meta
from monai.data.utils import worker_init_fn
from monai.engines.utils import default_prepare_batch


def plain_tensor_worker_init(worker_id: int) -> None:
    """``worker_init_fn`` for training loaders: MONAI's per-worker transform seeding, then MetaTensor tracking off.

    The training engines read no metadata, and random transforms on plain tensors skip MetaTensor's bookkeeping
    (docs/RESULTS.md, "The training fast path"). Only the worker processes are affected: evaluation and inference,
    which need the metadata, run in the main process or their own loaders.
    """
    worker_init_fn(worker_id)
    set_track_meta(False)


def plain_tensor_batch(batchdata: dict, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
    """``prepare_batch`` for MONAI engines whose network is compiled: MONAI's default, with MetaTensors as plain
    tensors (a tensor subclass would break the compiled graphs; the validation during training reads no metadata)."""
    return tuple(
        item.as_tensor() if isinstance(item, MetaTensor) else item
        for item in default_prepare_batch(batchdata, device, non_blocking, **kwargs)
    )
