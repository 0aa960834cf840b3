"""Initial weights for a network about to be trained (transfer-learning baselines): strict, with a plain error."""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

from torch import nn

from bundle.networks.teacher import KeyMap, load_weights, map_keys

logger = logging.getLogger(__name__)
_SHOWN = 5  # keys listed per kind of mismatch; more would bury the message


def init_from_checkpoint(
    network: nn.Module,
    checkpoint: str | os.PathLike,
    submodule: str | None = None,
    exclude: str | None = None,
    key_map: KeyMap = (),
) -> nn.Module:
    """Load ``checkpoint`` into ``network`` (all keys and shapes must match, but ``exclude``) and return the network.

    ``checkpoint`` is a bare state dict or a MONAI ``CheckpointSaver`` file (weights under ``model``), read with
    ``weights_only=True``. With ``submodule`` (e.g. ``"student"``) only that part of ``network`` is initialised, the
    rest keeps its random weights: the file may hold the part's own state dict or that of a network having the part
    under the same name (a from-scratch student's ``student.*`` weights into explainer + student). ``exclude`` is a
    regular expression (``re.search``) of keys left out on both sides, the network's keeping their random weights: the
    classification head of a network pretrained on another task (``class_layers\\.out\\.``; with ``|classifier\\.``
    also torchvision's DenseNet head). ``key_map`` (config ``init_key_map``) renames the file's keys first, as
    ``teacher_key_map`` does for a teacher (another library's layer names). Anything else that does not fit stops the
    run with ``SystemExit`` naming the file and the mismatching keys: MONAI wraps exceptions from config expressions
    in its own long traceback, while a ``SystemExit`` message is the last thing the user sees (as for a missing
    teacher).
    """
    path = Path(checkpoint)
    if not path.is_file():
        raise SystemExit(f"initial weights not found: {path} (config value 'init_ckpt')")
    try:
        state = load_weights(path)
    except Exception as e:  # any unreadable file: a pickle, a TorchScript archive, not a checkpoint at all
        raise SystemExit(f"cannot read initial weights from {path} (config value 'init_ckpt'): {e}") from e
    if key_map:
        try:
            state = map_keys(state, key_map)
        except ValueError as e:  # its message names the teacher's key, which shares the rules' format
            raise SystemExit(f"config value 'init_key_map' for {path}: {e}") from e
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
    left_random: list[str] = []
    if exclude:
        pattern = re.compile(exclude)
        state = {k: v for k, v in state.items() if not pattern.search(k)}
        left_random = [k for k in network.state_dict() if pattern.search(k)]
        if not left_random:
            raise SystemExit(
                f"config value 'init_exclude' {exclude!r} matches no weight of {type(network).__name__} "
                f"(its last keys: {', '.join(list(network.state_dict())[-3:])})"
            )
    problems = _mismatches(network, state, left_random)
    if problems:
        raise SystemExit(
            f"initial weights {path} (config value 'init_ckpt') do not fit the network being trained "
            f"({type(network).__name__}): " + "; ".join(problems) + ". Initialise from a checkpoint of the same "
            "architecture (network_def), e.g. one trained with the same baseline config."
        )
    network.load_state_dict(state, strict=not left_random)
    kept = f", {len(left_random)} weights left random ({exclude})" if left_random else ""
    logger.info(f"initialised {type(whole).__name__}{'.' + submodule if submodule else ''} from {path}{kept}")
    return whole


def _mismatches(network: nn.Module, state: dict, left_random: list[str] | None = None) -> list[str]:
    """Missing keys, unexpected keys and shape differences, each summarised in one phrase (``left_random``: keys the
    file need not have)."""
    own = {k: v for k, v in network.state_dict().items() if k not in set(left_random or [])}

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
