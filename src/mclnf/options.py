"""Options declared once: a config is a dataclass composed of option groups, and the CLI is generated from it.

An option group is a keyword-only dataclass (an :class:`OptionGroup`) whose fields are declared with :func:`option` (default,
help text, argparse extras) and whose docstring's first line is the group's title in ``--help``. A
command's config inherits the groups it takes, so ``cfg.width`` reads the same in every command, and
:func:`add_options` turns the config class into argparse arguments (flag ``--name-with-dashes``,
type, ``nargs`` and ``choices`` from the annotation and the metadata, the default shown once, by the
help text itself). :func:`from_args` builds the config back from the parsed namespace. Adding an
option is one edit: a field in its group. :func:`read_options` reads a ``--config`` file (YAML, TOML
or JSON) and :func:`parse_options` the Python API's keywords into the same values, checked against the
same declarations.

Library code validates values and raises :class:`~mclnf.errors.MclnfError` naming the option as its
flag (``--steps 0: must be at least 1``); the CLI prints that line and exits 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from mclnf.errors import MclnfError


class OptionGroup:
    """Base of the option groups: after construction every group's own ``check()`` runs (most derived
    first), so a config composed of groups validates all of its options, each group only its own."""

    def __post_init__(self):
        for cls in type(self).__mro__:
            if "check" in cls.__dict__:
                cls.__dict__["check"](self)


def option(default: Any = None, help: str = "", *, flag: str | None = None, positional: bool = False, cli: bool = True, **argparse_kwargs) -> Any:
    """A dataclass field that is also a command-line option.

    ``help`` is the one description (the default is appended by :func:`add_options` when it is not
    None, so write "default: the kind's" into the help of options whose default depends on the data);
    ``flag`` renames the flag (a ``True`` boolean becomes ``--flag`` storing False: ``progress`` →
    ``--quiet``); ``positional`` makes it an argument; ``cli=False`` keeps it out of the CLI;
    ``argparse_kwargs`` (``choices``, ``metavar``, ``nargs``) pass through."""
    meta = {"help": help, "flag": flag, "positional": positional, "cli": cli, "argparse": argparse_kwargs}
    if default is dataclasses.MISSING:  # required
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _strip_none(annotation):
    """``X`` of ``X | None``; other annotations as they are."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return next(a for a in typing.get_args(annotation) if a is not type(None))
    return annotation


def _base_type(annotation) -> tuple[type, Any]:
    """(the scalar type, nargs) of a field's annotation: ``int | None`` → (int, None), ``tuple[int, int]`` → (int, 2), ``list[int]`` → (int, '+')."""
    annotation = _strip_none(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple and Ellipsis not in args:
        return args[0], len(args)
    if origin in (list, tuple):
        return args[0], "+"
    return annotation, None


def groups(cls: type) -> list[type]:
    """The option groups ``cls`` is composed of, in the order their options are shown."""
    return [c for c in (*cls.__mro__[1:], cls) if dataclasses.is_dataclass(c) and c.__dict__.get("__annotations__")]


def add_options(parser: argparse.ArgumentParser, cls: type, defaults: dict | None = None, exclude: tuple[str, ...] = ()) -> None:
    """Arguments for every CLI field of the config class ``cls`` (but ``exclude``), one argparse group
    per option group; ``defaults`` overrides declared defaults (cl-bench's overrides: None; a ``--config``
    file's values, which also make positionals optional). Positionals show their name in capitals."""
    hints = typing.get_type_hints(cls)
    defaults, done = defaults or {}, set(exclude)
    for group_cls in groups(cls):
        own = group_cls.__dict__["__annotations__"]
        fields = [f for f in dataclasses.fields(cls) if f.name in own and f.name not in done and f.metadata.get("cli", False)]
        if not fields:
            continue
        title = (group_cls.__doc__ or group_cls.__name__).strip().splitlines()[0]
        g = parser.add_argument_group(title)
        for f in fields:
            done.add(f.name)
            meta, kwargs, text = f.metadata, dict(f.metadata["argparse"]), f.metadata["help"]
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.name not in defaults
            default = defaults[f.name] if f.name in defaults else None if required else f.default if f.default is not dataclasses.MISSING else f.default_factory()
            kind, nargs = _base_type(hints[f.name])
            if kind is bool:  # the flag turns the declared default around (whatever ``defaults`` says)
                kwargs.setdefault("action", "store_false" if f.default is True else "store_true")
            else:
                kwargs.setdefault("type", kind)
                if nargs is not None:
                    kwargs.setdefault("nargs", nargs)
                if default is not None and default != []:
                    text += f" (default: {' '.join(map(str, default)) if isinstance(default, (list, tuple)) else default})"
            if meta["positional"]:
                if not required:  # a list may then be empty (its default: a --config file's)
                    kwargs["nargs"] = "*" if kwargs.get("nargs") in ("+", "*") else "?"
                kwargs.setdefault("metavar", None if "choices" in kwargs else f.name.upper())
                g.add_argument(f.name, default=default, help=text, **kwargs)
            else:
                g.add_argument(flag_name(meta["flag"] or f.name), dest=f.name, default=default, help=text, **kwargs)


def from_args(cls: type, namespace: argparse.Namespace, **extra):
    """The config ``cls`` from a parsed namespace (sequences of tuple fields as tuples), plus ``extra``."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not hasattr(namespace, f.name):
            continue
        v = getattr(namespace, f.name)
        if isinstance(v, list) and typing.get_origin(_strip_none(hints[f.name])) is tuple:
            v = tuple(v)
        values[f.name] = v
    return cls(**values, **extra)


def to_dict(cfg) -> dict:
    """A config as JSON-ready values (paths as strings)."""
    return {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(cfg).items()}


# ---- --config files: option names → values, checked as the CLI checks them ------------------------
CONFIG_FORMATS = {".yaml": "YAML", ".yml": "YAML", ".toml": "TOML", ".json": "JSON"}


def read_mapping(path: Path) -> dict:
    """The table a YAML, TOML or JSON file (by its suffix) holds; any problem is one error naming the file."""
    path = Path(path)
    fmt = CONFIG_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise MclnfError(f"--config {path}: unsupported format {path.suffix or '(no suffix)'}; expected one of {', '.join(CONFIG_FORMATS)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MclnfError(f"--config {path}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MclnfError(f"--config {path}: cannot read it ({getattr(e, 'strerror', None) or type(e).__name__})") from None
    try:
        data = tomllib.loads(text) if fmt == "TOML" else json.loads(text) if fmt == "JSON" else yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        raise MclnfError(f"{path}: not valid YAML ({f'line {mark.line + 1}: ' if mark else ''}{getattr(e, 'problem', None) or type(e).__name__})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as e:
        raise MclnfError(f"{path}: not valid {fmt} ({str(e).splitlines()[0]})") from None
    if data is None:  # an empty YAML file
        return {}
    if not isinstance(data, dict):
        raise MclnfError(f"{path}: must hold a table of option names and values, not a {type(data).__name__}")
    return data


def option_names(cls: type, exclude: tuple[str, ...] = ()) -> dict[str, tuple[dataclasses.Field, bool]]:
    """Every name a config file may use for the CLI options of ``cls`` → (the field, whether the name turns
    the option off): the field's name (``batch_size``), its flag with or without dashes (``batch-size``,
    ``--batch-size``), and a switch's flag that turns it off (``quiet``, ``emcl-no-pgd``, ``no-ndc``: true means off)."""
    names, hints = {}, typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli") or f.name in exclude:
            continue
        flag = flag_name(f.metadata["flag"] or f.name)[2:]
        action = f.metadata["argparse"].get("action")
        off = _base_type(hints[f.name])[0] is bool and f.metadata["flag"] is not None and f.default is True and action is None  # --quiet stores False
        names[f.name] = names[f.name.replace("_", "-")] = (f, False)
        names[flag] = names[flag.replace("-", "_")] = (f, off)
        if action is argparse.BooleanOptionalAction:
            names["no-" + flag] = names["no_" + flag.replace("-", "_")] = (f, True)
    return {**names, **{"--" + k: v for k, v in names.items() if "_" not in k}}


def read_options(path: Path, classes: list[tuple[type, tuple[str, ...]]], command: str) -> dict[str, Any]:
    """A ``--config`` file's options as config values by field name, for the command whose CLI options are
    those of ``classes`` ((config class, excluded names) pairs); see :func:`parse_options`."""
    return parse_options(read_mapping(path), classes, command, str(path))


def parse_options(mapping: dict, classes: list[tuple[type, tuple[str, ...]]], command: str, source: str) -> dict[str, Any]:
    """Options named as a config file or the Python API names them, as config values by field name. Every
    key must name one option of ``command`` (see :func:`option_names`); every value must be what the
    option's flag would parse (several values as a list, ``None``/``null`` for an unset option).
    Errors name ``source`` (the file) and the key."""
    names, hints = {}, {}
    for cls, exclude in classes:
        names |= option_names(cls, exclude)
        hints |= typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in mapping.items():
        if key not in names:
            raise MclnfError(f"{source}: {key}: not an option of mclnf {command} (see mclnf {command} --help)")
        f, off = names[key]
        if f.name in values:
            raise MclnfError(f"{source}: {key}: the option {flag_name(f.name)} is given twice")
        value = _file_value(value, hints[f.name], f, f"{source}: {key}")
        values[f.name] = (not value) if off and value is not None else value
    return values


def _file_value(value, hint, f: dataclasses.Field, where: str):
    """A config file's value for the field ``f`` (annotation ``hint``), as the option's flag would parse it."""
    kind, nargs = _base_type(hint)
    nargs = f.metadata["argparse"].get("nargs", nargs)
    if value is None:
        if _strip_none(hint) is hint:
            raise MclnfError(f"{where}: must have a value")
        return None
    if kind is bool:
        if not isinstance(value, bool):
            raise MclnfError(f"{where}: {value!r} is not true or false")
        return value
    if nargs is None:
        return _file_scalar(value, kind, f, where)
    if not isinstance(value, (list, tuple)):
        value = [value]  # one value of a list option
    if (isinstance(nargs, int) and len(value) != nargs) or (nargs == "+" and not value):
        raise MclnfError(f"{where}: {value!r} is not a list of {nargs if isinstance(nargs, int) else 'one or more'} values")
    items = [_file_scalar(v, kind, f, where) for v in value]
    return tuple(items) if typing.get_origin(_strip_none(hint)) is tuple else items


def _file_scalar(value, kind: type, f: dataclasses.Field, where: str):
    what = {int: "an integer", float: "a number", str: "a text", Path: "a path"}.get(kind, kind.__name__)
    if kind in (str, Path) and isinstance(value, os.PathLike):  # the Python API's paths
        value = os.fspath(value)
    if isinstance(value, str) and kind in (int, float):  # as the flag parses it (YAML reads 1e-4 as text)
        try:
            value = kind(value)
        except ValueError:
            raise MclnfError(f"{where}: {value!r} is not {what}") from None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else isinstance(value, str) if kind is Path else isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise MclnfError(f"{where}: {value!r} is not {what}")
    value = float(value) if kind is float else Path(value) if kind is Path else value
    choices = f.metadata["argparse"].get("choices")
    if choices is not None and value not in choices:
        raise MclnfError(f"{where}: {value!r} is not one of {', '.join(map(str, choices))}")
    return value


# ---- checks shared by every group; each names the option as its flag ------------------------------
def check_positive_int(cfg, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise MclnfError(f"{flag_name(name)} {value}: must be a positive integer")


def check_range(cfg, name: str, low: float, high: float, low_open: bool = False, high_open: bool = True, what: str = "") -> None:
    """``getattr(cfg, name)`` in the interval between ``low`` and ``high`` (open or closed ends), else an error naming its flag."""
    value = getattr(cfg, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
    ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise MclnfError(f"{flag_name(name)} {value}: must be {what or 'in ' + interval}")


def check_choice(cfg, name: str, choices) -> None:
    if getattr(cfg, name) not in choices:
        raise MclnfError(f"{flag_name(name)} {getattr(cfg, name)}: unknown; choose one of {', '.join(choices)}")


def check_seed(cfg, *names: str) -> None:
    """Seeds are integers in [0, 2⁶³) (numpy's SeedSequence takes no negative ones, torch no wider ones)."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
            raise MclnfError(f"{flag_name(name)} {value}: must be an integer from 0 to 2^63 - 1")


def check_positive(cfg, *names: str) -> None:
    for name in names:
        check_range(cfg, name, 0, math.inf, low_open=True, what="a positive finite number")


def check_non_negative(cfg, *names: str) -> None:
    for name in names:
        check_range(cfg, name, 0, math.inf, what="a non-negative finite number")
