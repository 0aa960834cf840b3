"""Initial weights for a network about to be trained (transfer-learning baselines): strict, with a plain error."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torch import nn

from bundle.networks.teacher import load_weights

logger = logging.getLogger(__name__)
_SHOWN = 5  # keys listed per kind of mismatch; more would bury the message


def init_from_checkpoint(network: nn.Module, checkpoint: str | os.PathLike, submodule: str | None = None) -> nn.Module:
    """Load ``checkpoint`` into ``network`` (all keys and shapes must match) and return the network.

    ``checkpoint`` is a bare state dict or a MONAI ``CheckpointSaver`` file (weights under ``model``), read with
    ``weights_only=True``. With ``submodule`` (e.g. ``"student"``) only that part of ``network`` is initialised, the
    rest keeps its random weights: the file may hold the part's own state dict or that of a network having the part
    under the same name (a from-scratch student's ``student.*`` weights into explainer + student). Anything that does
    not fit stops the run with ``SystemExit`` naming the file and the mismatching keys: MONAI wraps exceptions from
    config expressions in its own long traceback, while a ``SystemExit`` message is the last thing the user sees (as
    for a missing teacher).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise SystemExit(f"initial weights not found: {path} (config value 'init_ckpt')")
    try:
        state = load_weights(path)
    except Exception as e:  # any unreadable file: a pickle, a TorchScript archive, not a checkpoint at all
        raise SystemExit(f"cannot read initial weights from {path} (config value 'init_ckpt'): {e}") from e
    whole = network
    if submodule:
        try:
            network = network.get_submodule(submodule)
        except AttributeError as e:
            raise SystemExit(
                f"config value 'init_submodule': {type(whole).__name__} has no part named {submodule!r}"
            ) from e
        prefix = submodule + "."
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    problems = _mismatches(network, state)
    if problems:
        raise SystemExit(
            f"initial weights {path} (config value 'init_ckpt') do not fit the network being trained "
            f"({type(network).__name__}): " + "; ".join(problems) + ". Initialise from a checkpoint of the same "
            "architecture (network_def), e.g. one trained with the same baseline config."
        )
    network.load_state_dict(state, strict=True)
    logger.info(f"initialised {type(whole).__name__}{'.' + submodule if submodule else ''} from {path}")
    return whole


def _mismatches(network: nn.Module, state: dict) -> list[str]:
    """Missing keys, unexpected keys and shape differences, each summarised in one phrase."""
    own = network.state_dict()

    def listed(keys: list[str]) -> str:
        more = f", ... ({len(keys) - _SHOWN} more)" if len(keys) > _SHOWN else ""
        return ", ".join(keys[:_SHOWN]) + more

    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} weights missing from the file ({listed(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected weights in the file ({listed(unexpected)})")
    if shapes:
        problems.append(f"{len(shapes)} shapes differ ({listed(shapes)})")
    return problems
