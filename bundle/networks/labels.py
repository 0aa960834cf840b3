"""From a teacher's outputs to the local task's classes: names matched, subsets, reordering, merges (docs/TEACHERS.md).

A teacher trained elsewhere predicts its own label set in its own order ("Pleural Effusion", 18 findings, 5 grades);
the local task has the datalist's ``classes``. ``LabelMap`` turns the teacher's logits into logits over the local
classes it covers, so that Hinton KD and the fidelity term compare like with like:

- multi-class teacher, multi-class task: each local class is one teacher class or a merge of several (their
  probabilities add up), and the distribution is renormalised over the covered local classes. Returned as
  log-probabilities, which softmax (at any temperature) reads as logits.
- multi-label teacher, multi-label task: each local finding is one teacher finding (its logit), or "any of" several
  (the highest probability, i.e. the largest logit).
- multi-class teacher, multi-label task: a local finding is the event "one of these teacher classes"; its probability
  is their sum, returned as the logit ``log p - log (1 - p)``.
- multi-label teacher, multi-class task: meaningful only for a 2-class task, one class a finding and the other its
  absence (``"not <finding>"`` in ``label_map``); anything else is refused, since independent per-finding
  probabilities do not make one distribution over several classes.

Local classes that the teacher lacks are listed in ``lacking``: KD and fidelity then run on ``covered`` only, CE on
all (``bundle.losses.MedTexLoss``'s ``teacher_classes``). When the names and tasks agree one to one, the logits pass
through unchanged (the bundle's own teacher).
"""

from __future__ import annotations

import difflib
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

TASKS = ("multiclass", "multilabel")
NOT_PREFIX = "not "  # label_map: "not Effusion" is the finding's absence (a 2-class task from a multi-label teacher)
MapValue = Union[str, Sequence[str], None]


def normalise_name(name: str) -> str:
    """Names compared without case, and with ``_``, ``-`` and runs of spaces read as one space."""
    return re.sub(r"[\s_\-]+", " ", str(name)).strip().casefold()


class LabelMap(nn.Module):
    """Logits of a teacher with ``teacher_names`` outputs -> logits over the local classes it covers.

    Args:
        teacher_names: the teacher's output names in its order (an empty name marks an output to ignore, as
            torchxrayvision's untrained outputs).
        local_classes: the local task's classes (the datalist's ``classes``).
        teacher_task, local_task: ``multiclass`` (softmax) or ``multilabel`` (sigmoid per class).
        mapping: config ``label_map``: local class -> a teacher name, a list of names (a merge), ``"not NAME"``
            (the finding's absence) or ``null`` (the teacher lacks it). Local classes not given are matched by name.
        synonyms: config ``label_synonyms``: groups of names that mean the same finding, e.g.
            ``[[Effusion, Pleural Effusion]]``.

    Raises:
        ValueError: naming the config value (``label_map``, ``label_synonyms``) for an unknown name, a teacher
            output claimed twice in a multi-class merge, a name matched twice, or a mapping that makes no sense.
    """

    def __init__(
        self,
        teacher_names: Sequence[str],
        local_classes: Sequence[str],
        teacher_task: str,
        local_task: str,
        mapping: Optional[Mapping[str, MapValue]] = None,
        synonyms: Sequence[Sequence[str]] = (),
    ) -> None:
        super().__init__()
        for name, task in (("teacher_task", teacher_task), ("task", local_task)):
            if task not in TASKS:
                raise ValueError(f"{name} must be one of {TASKS}, not {task!r}")
        self.teacher_names = [str(n) for n in teacher_names]
        self.local_classes = [str(c) for c in local_classes]
        self.teacher_task, self.local_task = teacher_task, local_task
        sources, negated = self._resolve(dict(mapping or {}), [list(g) for g in synonyms])
        self.sources = sources  # per local class: teacher output indices ([] when the teacher lacks it)
        self.covered = [c for c, s in enumerate(sources) if s]
        self.lacking = [self.local_classes[c] for c, s in enumerate(sources) if not s]
        if not self.covered:
            raise ValueError(
                f"label_map: no local class ({', '.join(self.local_classes)}) matches a teacher output "
                f"({', '.join(n for n in self.teacher_names if n)}); map them in label_map or label_synonyms"
            )
        self.negated = negated
        self.identity = (
            teacher_task == local_task
            and len(self.teacher_names) == len(self.local_classes)
            and sources == [[c] for c in range(len(self.local_classes))]
        )
        self._check_task_pair()
        # one index tensor per covered class, and for multi-label targets from a multi-class teacher the complement;
        # buffers, so that they move to the teacher's device once (not in every pass)
        everything = set(range(len(self.teacher_names)))
        for i, c in enumerate(self.covered):
            self.register_buffer(f"group{i}", torch.tensor(sources[c]), persistent=False)
            self.register_buffer(f"complement{i}", torch.tensor(sorted(everything - set(sources[c]))), persistent=False)

    # --- resolution (config names -> indices) -----------------------------------------------------------------
    def _resolve(self, mapping: dict[str, MapValue], synonyms: list[list[str]]) -> tuple[list[list[int]], list[bool]]:
        teacher_index: dict[str, int] = {}
        for i, name in enumerate(self.teacher_names):
            if not name.strip():
                continue  # an output the teacher was not trained for
            key = normalise_name(name)
            if key in teacher_index:
                raise ValueError(f"teacher_output_names: {name!r} appears twice (outputs {teacher_index[key]} and {i})")
            teacher_index[key] = i
        local_keys = {normalise_name(c): c for c in self.local_classes}
        unknown_local = [k for k in mapping if normalise_name(k) not in local_keys]
        if unknown_local:
            raise ValueError(
                f"label_map: {unknown_local} are not local classes (the datalist's classes: {self.local_classes})"
            )
        mapping = {local_keys[normalise_name(k)]: v for k, v in mapping.items()}
        for group in synonyms:
            if isinstance(group, str) or len(group) < 2:
                raise ValueError(f"label_synonyms: each entry is a list of two or more names, got {group!r}")

        def teacher_output(name: str) -> int:
            key = normalise_name(name)
            if key not in teacher_index:
                close = difflib.get_close_matches(name, [n for n in self.teacher_names if n], n=3)
                hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
                raise ValueError(f"label_map: {name!r} is not one of the teacher's output names{hint}")
            return teacher_index[key]

        sources: list[list[int]] = []
        negated: list[bool] = []
        for local in self.local_classes:
            if local in mapping:
                value = mapping[local]
                names = [] if value is None else [value] if isinstance(value, str) else list(value)
                is_not = [n.casefold().startswith(NOT_PREFIX) for n in names]
                if any(is_not) and (len(names) != 1):
                    raise ValueError(f"label_map: {local!r}: 'not NAME' stands alone, got {names}")
                names = [n[len(NOT_PREFIX) :] if neg else n for n, neg in zip(names, is_not)]
                sources.append([teacher_output(n) for n in names])
                negated.append(any(is_not))
                continue
            key = normalise_name(local)
            candidates = {teacher_index[key]} if key in teacher_index else set()
            for group in synonyms:
                keys = {normalise_name(n) for n in group}
                if key in keys:
                    candidates |= {teacher_index[k] for k in keys if k in teacher_index}
            if len(candidates) > 1:
                found = [self.teacher_names[i] for i in sorted(candidates)]
                raise ValueError(
                    f"label_synonyms: local class {local!r} matches several teacher outputs {found}; "
                    "choose one in label_map"
                )
            sources.append(sorted(candidates))
            negated.append(False)
        if any(negated) and not (self.teacher_task == "multilabel" and self.local_task == "multiclass"):
            raise ValueError("label_map: 'not NAME' is for a 2-class task distilled from a multi-label teacher only")
        return sources, negated

    def _check_task_pair(self) -> None:
        if self.teacher_task == "multiclass" and self.local_task == "multiclass":
            claimed = [i for c in self.covered for i in self.sources[c]]
            twice = sorted({self.teacher_names[i] for i in claimed if claimed.count(i) > 1})
            if twice:
                raise ValueError(f"label_map: teacher classes {twice} feed several local classes (a class adds once)")
        if self.teacher_task == "multiclass" and self.local_task == "multilabel":
            everything = [c for c in self.covered if len(self.sources[c]) == len(self.teacher_names)]
            if everything:
                raise ValueError(
                    f"label_map: {[self.local_classes[c] for c in everything]} map to every teacher class "
                    "(probability 1 for every image): nothing to distil"
                )
        if self.teacher_task == "multilabel" and self.local_task == "multiclass":
            if len(self.local_classes) != 2 or len(self.covered) != 2 or self.negated.count(True) != 1:
                raise ValueError(
                    "label_map: a multi-label teacher gives each finding its own probability, which makes one "
                    "distribution only for a 2-class task whose classes are a finding and its absence, e.g. "
                    "label_map: {effusion: Effusion, normal: not Effusion}; got "
                    f"{len(self.local_classes)} classes {self.local_classes}"
                )
            positive = self.negated.index(False)
            if sorted(self.sources[0]) != sorted(self.sources[1]):
                raise ValueError(
                    f"label_map: {self.local_classes[1 - positive]!r} must be 'not' of the same finding(s) as "
                    f"{self.local_classes[positive]!r}"
                )

    # --- the map itself -----------------------------------------------------------------------------------------
    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, len(teacher_names))`` teacher logits -> ``(B, len(covered))`` logits in the local task's sense."""
        if self.identity:
            return logits
        logits = logits.float()
        groups = [getattr(self, f"group{i}") for i in range(len(self.covered))]
        if self.teacher_task == "multiclass":
            log_q = F.log_softmax(logits, dim=1)
            log_p = torch.stack([torch.logsumexp(log_q[:, g], dim=1) for g in groups], dim=1)
            if self.local_task == "multiclass":  # renormalised over the covered classes
                return log_p - torch.logsumexp(log_p, dim=1, keepdim=True)
            complements = [getattr(self, f"complement{i}") for i in range(len(self.covered))]
            log_not = torch.stack([torch.logsumexp(log_q[:, g], dim=1) for g in complements], dim=1)
            return log_p - log_not
        any_of = torch.stack([logits[:, g].amax(dim=1) for g in groups], dim=1)  # max probability = max logit
        if self.local_task == "multilabel":
            return any_of
        # a 2-class task: [absence, finding] as log-probabilities, in the local classes' order
        finding = any_of[:, 0]
        columns = [F.logsigmoid(-finding) if neg else F.logsigmoid(finding) for neg in self.negated]
        return torch.stack(columns, dim=1)

    def describe(self) -> str:
        """One line: each local class and the teacher output(s) it comes from, and the classes the teacher lacks."""
        if self.identity:
            return f"teacher outputs = local classes ({', '.join(self.local_classes)})"
        parts = []
        for c in self.covered:
            names = " + ".join(repr(self.teacher_names[i]) for i in self.sources[c])
            names = f"not {names}" if self.negated[c] else names
            parts.append(f"{self.local_classes[c]} <- {names}")
        text = f"{self.teacher_task} teacher -> {self.local_task} task: " + "; ".join(parts)
        if self.lacking:
            text += f"; the teacher lacks {self.lacking} (KD and fidelity on the other classes, CE on all)"
        return text
