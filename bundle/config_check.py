"""Catch command-line overrides that name no config key or give a value of the wrong type, before the run starts.

MONAI's ``ConfigParser`` accepts any override: one for an id that no config defines is added and never read (the typo
``--learning_rat 0.01`` trains with the default learning rate), and any value type goes through (``--max_epochs 3O``
is the string ``'3O'`` and fails deep inside Ignite). ``check_overrides`` compares overrides with the merged configs
and lists every problem at once:

- unknown key: a top-level id that no config file defines (with the closest known ids as suggestions); a nested id
  (``--network_def#features 16``) needs its parent: a dict gains the key, a list must have the index (on the
  command line MONAI itself stops at a missing parent, with a traceback, before any step runs); a new key of a
  component (a dict with ``_target_``) must be an argument of its class or function (``--image_reader#scale_16bt``
  would otherwise stop the run at instantiation, after the data were listed);
- wrong type: where the configs give a plain literal default, the value must fit it: an int default takes an int
  (not a bool), a float default an int or float, a bool default a bool, a string default a string (``auto`` also a
  bool: the true/false/auto switches), a list default a list (or ``auto``: teacher_feature_layers). Expression
  defaults (``$``, ``@``, ``%``), ``null`` and dicts take anything, and so does any override value that is itself an
  expression or reference;
- not one of the choices: ``multiframe`` and ``config_check`` take one of a few words (``CHOICES``);
- dropped value: MONAI's command line drops ``--key None`` (``update_kwargs`` ignores None), so it is reported where
  the config has another value (``'$None'`` sets null).

``check_cli_overrides``, the first ``initialize`` step of each workflow, runs it on the command line of
``python -m monai.bundle run ...`` under the config's ``config_check`` policy: ``error`` (stop), ``warn`` (log) or
``off``.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import pydoc
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from fire.parser import DefaultParseValue, SeparateFlagArgs
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.bundle import scripts as bundle_scripts
from monai.bundle.config_item import ComponentLocator
from monai.bundle.reference_resolver import ReferenceResolver
from monai.bundle.utils import DEFAULT_EXP_MGMT_SETTINGS

logger = logging.getLogger(__name__)

POLICIES = ("error", "warn", "off")
EXPRESSION_PREFIXES = ("$", "@", "%")
META_ID = "_meta_"  # metadata.json's content, which ConfigWorkflow reads under this id
MERGE_PREFIX = "+"  # MONAI's "+key" merges into key (update_kwargs/merge_kv): the id is key
# The bundle CLI commands whose arguments end in config overrides (**override / **kwargs).
_COMMANDS: dict[str, Callable[..., Any]] = {"run": bundle_scripts.run, "run_workflow": bundle_scripts.run_workflow}
_MAX_SUGGESTIONS = 3
# Top-level keys that take one of a few words: an override with another one is reported like a wrong type.
CHOICES: dict[str, tuple[str, ...]] = {
    "config_check": POLICIES,
    "multiframe": ("refuse", "per_frame"),  # inference: multi-frame files refused, or read one row per frame
}


def _named_parameters(function: Callable[..., Any]) -> list[str]:
    kinds = (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)
    return [p.name for p in inspect.signature(function).parameters.values() if p.kind not in kinds and p.name != "self"]


# Arguments of MONAI's run itself, not config keys: those of run/run_workflow, of create_workflow (which they call
# with the rest) and of ConfigWorkflow (which create_workflow builds with what is left before the overrides).
_RUN_FUNCTIONS: list[Callable[..., Any]] = [
    *_COMMANDS.values(),
    bundle_scripts.create_workflow,
    ConfigWorkflow.__init__,
]
MONAI_RUN_ARGUMENTS = frozenset(name for function in _RUN_FUNCTIONS for name in _named_parameters(function))


def is_expression(value: Any) -> bool:
    """Whether ``value`` is a config expression or reference (``$...``, ``@...``, ``%...``): checked when resolved."""
    return isinstance(value, str) and value.startswith(EXPRESSION_PREFIXES)


def _expected_type(default: Any) -> tuple[str, Callable[[Any], bool]] | None:
    """What an override of ``default`` must be: (description, test), or ``None`` when anything goes."""
    if isinstance(default, bool):  # before int: bool is an int subclass
        return "True or False", lambda v: isinstance(v, bool)
    if isinstance(default, int):
        return "an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)
    if isinstance(default, float):
        return "a number", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
    if isinstance(default, str) and not is_expression(default):
        if default == "auto":  # the true/false/auto switches (teacher_bf16)
            return "a string or True/False", lambda v: isinstance(v, (str, bool))
        return "a string", lambda v: isinstance(v, str)
    if isinstance(default, (list, tuple)):  # or 'auto' (teacher_feature_layers: layers matched automatically)
        return "a list (or 'auto')", lambda v: isinstance(v, (list, tuple)) or v == "auto"
    return None  # null, dicts (components), expressions


def _component_parameters(target: Any) -> list[str] | None:
    """The keyword arguments a component's ``_target_`` accepts, or ``None`` when it takes any (``**kwargs``) or
    cannot be looked up here (an expression, a name MONAI's locator does not know): then nothing is checked."""
    if not isinstance(target, str) or is_expression(target):
        return None
    module = ComponentLocator().get_component_module_name(target) if "." not in target else None
    component = pydoc.locate(f"{module}.{target}" if isinstance(module, str) else target)
    if component is None or not callable(component):  # inspect.signature would raise TypeError
        return None
    try:
        parameters = inspect.signature(component).parameters.values()
    except (TypeError, ValueError):  # builtins without a signature
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]


def _file_list(config_files: str | Path | Sequence[str | Path]) -> list[str]:
    """The config files as ``ConfigParser.load_config_files`` reads them (a list, or one path, or "a,b")."""
    if isinstance(config_files, (str, Path)):
        if not Path(config_files).is_file() and "," in str(config_files):
            return [f.strip() for f in str(config_files).split(",")]
        return [str(config_files)]
    return [str(f) for f in config_files]


def _source(files: Sequence[str], contents: Sequence[Mapping[str, Any]], parts: Sequence[str]) -> str:
    """The last file that sets ``parts`` or a section above it: where the default comes from."""
    for name, content in zip(reversed(files), reversed(contents)):
        for key in content:
            key_parts = ReferenceResolver.split_id(key)
            if key_parts == list(parts[: len(key_parts)]):
                return name
    return ", ".join(files)


def _describe(value: Any) -> str:
    return f"{_short(value)} ({type(value).__name__})"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def find_problems(
    config_files: str | Path | Sequence[str | Path],
    overrides: Mapping[str, Any],
    extra_keys: Sequence[str] = (),
) -> list[str]:
    """Every override of ``overrides`` (id -> value, as MONAI receives them) that ``config_files`` do not define or
    whose value does not fit the configs' literal default, as one message each. ``extra_keys``: top-level ids that
    other sources add (MONAI's tracking settings)."""
    files = _file_list(config_files)
    contents = [ConfigParser.load_config_file(f) or {} for f in files]
    merged = ConfigParser.load_config_files(files)
    top_level = sorted({str(k) for k in merged} | set(extra_keys))
    where = ", ".join(files)
    problems = []
    for raw_id, value in overrides.items():
        id_ = str(raw_id)[len(MERGE_PREFIX) :] if str(raw_id).startswith(MERGE_PREFIX) else str(raw_id)
        parts = ReferenceResolver.split_id(id_)
        if parts[0] == META_ID:
            continue  # metadata (configs/metadata.json): not what this check is about
        if parts[0] not in merged:
            if parts[0] in extra_keys:
                continue
            message = f"unknown config key {parts[0]!r} (not in {where})"
            close = difflib.get_close_matches(parts[0], top_level, n=_MAX_SUGGESTIONS)
            if close:
                message += "; did you mean " + " or ".join(repr(c) for c in close) + "?"
            problems.append(message)
            continue
        node: Any = merged
        defined, broken = True, False  # defined: the id exists; broken: its path does not fit the config
        for depth, part in enumerate(parts):
            parent = "#".join(parts[:depth]) or "the config"
            if isinstance(node, dict):
                if part in node:
                    node = node[part]
                    continue
                if depth == len(parts) - 1:  # a new key in an existing dict: e.g. another constructor argument
                    accepted = _component_parameters(node.get("_target_")) if not part.startswith("_") else None
                    if accepted is not None and part not in accepted:  # "_name_" keys are MONAI's (_disabled_, ...)
                        close = difflib.get_close_matches(part, accepted, n=_MAX_SUGGESTIONS)
                        hint = "; did you mean " + " or ".join(repr(c) for c in close) + "?" if close else ""
                        problems.append(f"{id_}: {node['_target_']} ({parent}) takes no argument {part!r}{hint}")
                        broken = True
                    defined = False
                    break
                close = difflib.get_close_matches(part, [str(k) for k in node], n=_MAX_SUGGESTIONS)
                hint = "; did you mean " + " or ".join(repr(c) for c in close) + "?" if close else ""
                problems.append(f"{id_}: {parent!r} has no key {part!r}{hint}")
                broken = True
            elif isinstance(node, list):
                if part.lstrip("-").isdigit() and -len(node) <= int(part) < len(node):
                    node = node[int(part)]
                    continue
                problems.append(f"{id_}: {parent!r} is a list of {len(node)} items, it has no item {part!r}")
            else:
                problems.append(f"{id_}: {parent!r} is {_describe(node)}, not a section with keys or items")
            defined, broken = False, True
            break
        if broken:
            continue
        if value is None and (not defined or node is not None):
            # MONAI's update_kwargs drops None before the config sees it: the override silently does nothing
            kept = f"{_source(files, contents, parts)} keeps {_short(node)}" if defined else "the key is not set"
            problems.append(f"{id_}: None is dropped by MONAI's command line, so {kept}; write '$None' to set null")
            continue
        if not defined or value is None or is_expression(value):
            continue
        expected = _expected_type(node)
        if expected is not None and not expected[1](value):
            source = _source(files, contents, parts)
            problems.append(f"{id_}: expected {expected[0]} ({source} has {_short(node)}), got {_describe(value)}")
        elif id_ in CHOICES and value not in CHOICES[id_]:
            problems.append(f"{id_}: expected one of {', '.join(CHOICES[id_])}, got {_describe(value)}")
    return problems


def check_overrides(
    config_files: str | Path | Sequence[str | Path],
    overrides: Mapping[str, Any],
    policy: str = "error",
    extra_keys: Sequence[str] = (),
) -> list[str]:
    """``find_problems`` under ``policy``: ``error`` raises ``SystemExit`` listing every problem, ``warn`` logs them,
    ``off`` checks nothing. Returns the problems found (empty under ``off``)."""
    if policy not in POLICIES:
        raise ValueError(f"config_check must be one of {', '.join(POLICIES)}, not {policy!r}")
    if policy == "off":
        return []
    problems = find_problems(config_files, overrides, extra_keys)
    if not problems:
        return problems
    listing = "\n".join(f"  - {p}" for p in problems)
    header = f"{len(problems)} command-line override(s) do not fit the configs ({', '.join(_file_list(config_files))}):"
    if policy == "error":
        raise SystemExit(
            f"{header}\n{listing}\nFix the command line (values are read as Python literals: 30 is an integer, "
            "True a boolean, '\"30\"' a string), or set config_check: warn (--config_check warn) to run anyway."
        )
    logger.warning("%s\n%s\nRunning anyway under config_check: warn.", header, listing)
    return problems


def _is_flag(token: str) -> bool:
    """As python-fire: a token starting with a hyphen that is not a negative number."""
    return token.startswith("--") or (len(token) > 1 and token[0] == "-" and token[1].isalpha())


def parse_cli(argv: Sequence[str]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The arguments of ``python -m monai.bundle ARGV`` as python-fire passes them to MONAI: (MONAI's run arguments,
    config overrides), or ``None`` for commands other than ``run``/``run_workflow``. ``--key value``, ``--key=value``,
    a bare ``--key`` (True; ``--nokey``: key False), ``-`` in keys read as ``_``, values parsed as Python literals where
    they are, positional arguments in the command's parameter order and ``--args_file`` defaults under the command
    line's. MONAI drops ``None`` values (``update_kwargs``): such overrides are returned as ``None`` for the check."""
    tokens, _ = SeparateFlagArgs(list(argv))  # after a lone "--": fire's own flags
    if not tokens or tokens[0] not in _COMMANDS:
        return None
    parameters = _named_parameters(_COMMANDS[tokens[0]])
    given: dict[str, Any] = {}
    positional: list[str] = []
    rest = tokens[1:]
    skip = False
    for index, token in enumerate(rest):
        if skip:
            skip = False
            continue
        if not _is_flag(token):
            positional.append(token)
            continue
        key, has_equals, value = token.lstrip("-").partition("=")
        key = key.replace("-", "_")
        if not has_equals:
            if index + 1 == len(rest) or _is_flag(rest[index + 1]):  # a boolean flag
                if key not in parameters and key.startswith("no"):
                    key, value = key[2:], "False"
                else:
                    value = "True"
            else:
                value, skip = rest[index + 1], True
        given[key] = value
    for name in parameters:  # fire fills the parameters not given by name from the positional arguments, in order
        if name not in given and positional:
            given[name] = positional.pop(0)
    arguments = {key: DefaultParseValue(value) for key, value in given.items()}
    defaults: dict[str, Any] = {}
    if isinstance(arguments.get("args_file"), str):
        defaults = ConfigParser.load_config_file(arguments["args_file"]) or {}
    # MONAI's update_kwargs lays the command line over the args file and drops None values
    merged = {**defaults, **{k: v for k, v in arguments.items() if v is not None}}
    run_arguments = {k: v for k, v in merged.items() if k in MONAI_RUN_ARGUMENTS and v is not None}
    overrides = {k: v for k, v in merged.items() if k not in MONAI_RUN_ARGUMENTS and v is not None}
    # a None override reaches no config: kept here (None) so that the check can say so
    overrides |= {k: None for k, v in arguments.items() if v is None and k not in MONAI_RUN_ARGUMENTS | set(defaults)}
    return run_arguments, overrides


def _tracking_keys(tracking: Any) -> list[str]:
    """Top-level ids that MONAI's ``--tracking`` adds to the config (its settings' ``configs``)."""
    try:
        if isinstance(tracking, str) and tracking in DEFAULT_EXP_MGMT_SETTINGS:
            settings = DEFAULT_EXP_MGMT_SETTINGS[tracking]
        else:
            settings = ConfigParser.load_config_files(tracking)
        configs: Any = settings.get("configs", {})  # MONAI's settings type their values object: a dict of ids here
        return [str(k) for k in configs]
    except Exception:  # MONAI reports a bad tracking setting itself
        return []


def is_bundle_cli(argv: Sequence[str]) -> bool:
    """Whether the process is MONAI's bundle CLI (``python -m monai.bundle ...``, also under torchrun)."""
    return bool(argv) and Path(argv[0]).parts[-3:] == ("monai", "bundle", "__main__.py")


def check_cli_overrides(policy: str = "error", argv: Sequence[str] | None = None) -> list[str]:
    """A config step: ``check_overrides`` on the config files and overrides of this process's
    ``python -m monai.bundle run ...`` command line. Does nothing (returns ``[]``) in any other process, so the Python
    API (``ConfigWorkflow``, ``ConfigParser``) and the tests that build workflows directly are unaffected."""
    if policy not in POLICIES:
        raise ValueError(f"config_check must be one of {', '.join(POLICIES)}, not {policy!r}")
    # sys.argv, because MONAI's run and ConfigWorkflow merge the overrides into the config and keep no record of them
    # that a config item could read: after the merge a typo key looks like any other key.
    argv = sys.argv if argv is None else argv
    if policy == "off" or not is_bundle_cli(argv):
        return []
    parsed = parse_cli(argv[1:])
    if parsed is None:
        return []
    run_arguments, overrides = parsed
    config_files = run_arguments.get("config_file")
    if not config_files:
        return []
    extra_keys = _tracking_keys(run_arguments["tracking"]) if run_arguments.get("tracking") is not None else []
    return check_overrides(config_files, overrides, policy, extra_keys)
