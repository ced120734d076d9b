"""Command-line flags generated from settings dataclasses (gptlab.settings), and back.

A field `batch_size` becomes `--batch-size`, typed from its annotation, with its help text,
choices and default (shown in `--help`; a switch such as `--no-stop` shows no default); every
bool gets `--x` and `--no-x`; a nested group becomes a section of `--help`, its flags
unprefixed unless the group asks for a prefix. The range checks are not argparse's: they run
when the settings are built (Settings.__post_init__), so a library caller gets the same
message as the command line.

`command_line` goes the other way: settings (as config.json records them) to the command that
the parser turns back into the same settings, for the commands a run folder tells its user.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import MISSING
from pathlib import Path
from typing import Any

from gptlab.errors import GptlabError
from gptlab.settings import FlagError, show_value, type_hints


@dataclasses.dataclass(frozen=True)
class Spec:
    """One field as the command line sees it."""

    name: str
    base: type  # int, float, str, bool, Path, or a settings class for a group
    many: bool  # a tuple of `base`
    meta: dict[str, Any]


def _spec(cls: type, f: dataclasses.Field) -> Spec:
    hint = type_hints(cls)[f.name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = args[0]
    many = typing.get_origin(hint) is tuple
    base = typing.get_args(hint)[0] if many else hint
    if typing.get_origin(base) is typing.Literal:
        base = str
    return Spec(f.name, base, many, dict(f.metadata))


def specs(cls: type) -> Iterator[Spec]:
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli", True):
            yield _spec(cls, f)


def is_group(spec: Spec) -> bool:
    return dataclasses.is_dataclass(spec.base)


def _flag(spec: Spec, prefix: str) -> str:
    name = spec.meta.get("flag") or spec.name.replace("_", "-")
    return f"--{prefix}-{name}" if prefix else f"--{name}"


def add_settings(
    parser: argparse.ArgumentParser,
    cls: type,
    defaults: Any,
    prefix: str = "",
    dest: str = "",
    group: Any = None,
) -> None:
    """Add a flag for every field of settings class `cls`, defaults taken from `defaults`."""
    target = group or parser
    for spec in specs(cls):
        default = getattr(defaults, spec.name)
        key = f"{dest}{spec.name}"
        if is_group(spec):
            title = (spec.base.__doc__ or spec.name).strip().splitlines()[0]
            sub = parser.add_argument_group(title)
            inner = "-".join(p for p in (prefix, spec.meta.get("prefix") or "") if p)
            add_settings(parser, spec.base, default, inner, f"{key}.", sub)
            continue
        help_text = spec.meta.get("help", "").replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": key, "default": default}
        choices = spec.meta.get("choices")
        if choices is not None:
            kwargs["choices"] = choices
            names = [str(choice) for choice in choices]  # e.g. --shots 0|5
            if not all(name in help_text for name in names):  # the metavar hides them
                help_text += f" (one of: {', '.join(names)})"
        if spec.base is not bool:
            kwargs["metavar"] = spec.meta.get("metavar") or spec.name.upper()
        if spec.meta.get("positional"):
            kwargs.pop("dest")
            nargs = "*" if spec.many else None
            kind = spec.base if spec.base in (int, float, Path) else str
            target.add_argument(key, nargs=nargs, type=kind, help=help_text, **kwargs)
            continue
        switch = spec.meta.get("const", MISSING) is not MISSING  # no value of its own to show
        if switch:
            kwargs.update(action="store_const", const=spec.meta["const"])
        elif spec.base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = spec.base if spec.base in (int, float, Path) else str
            if spec.many:
                kwargs.update(action="extend", nargs="+")
                kwargs["default"] = None  # extend would add to the default otherwise
        required = bool(spec.meta.get("required"))
        if required:
            kwargs["required"] = True
        elif (
            spec.base is not bool and not switch and not (default is None and "(none:" in help_text)
        ):
            help_text += f" (default: {show_value(default)})".replace("%", "%%")
        target.add_argument(_flag(spec, prefix), help=help_text, **kwargs)


def build(
    cls: type, ns: argparse.Namespace, defaults: Any, prefix: str = "", dest: str = ""
) -> Any:
    """The settings object the parsed flags describe (checked on construction)."""
    values: dict[str, Any] = {}
    for spec in specs(cls):
        key = f"{dest}{spec.name}"
        if is_group(spec):
            inner = "-".join(p for p in (prefix, spec.meta.get("prefix") or "") if p)
            default = getattr(defaults, spec.name)
            values[spec.name] = build(spec.base, ns, default, inner, f"{key}.")
            continue
        value = getattr(ns, key)
        if spec.many:
            if value is None:
                value = getattr(defaults, spec.name)
            elif spec.meta.get("sep"):
                value = [p.strip() for v in value for p in v.split(spec.meta["sep"]) if p.strip()]
            value = None if value is None else tuple(value)
        values[spec.name] = value
    try:
        return cls(**values)
    except FlagError as exc:
        if not prefix:
            raise
        raise FlagError(f"{prefix}-{exc.flag[2:]}", str(exc).split(": ", 1)[1]) from None


# ---- settings back to the command line -------------------------------------------------------


def _leaves(
    cls: type, values: dict[str, Any], defaults: dict[str, Any], prefix: str = ""
) -> Iterator[tuple[Spec, str, Any, Any]]:
    """(spec, flag prefix, value, default) of every command-line field, groups flattened; a
    field `values` lacks (a config.json of an older gptlab) keeps its default."""
    for spec in specs(cls):
        default = defaults[spec.name]
        value = values.get(spec.name, default)
        if is_group(spec):
            inner = "-".join(p for p in (prefix, spec.meta.get("prefix") or "") if p)
            yield from _leaves(spec.base, value, default, inner)
        else:
            yield spec, prefix, value, default


def _field_argv(spec: Spec, prefix: str, value: Any, default: Any, always: bool) -> list[str]:
    """The arguments that set one field to `value` (JSON), none where the default does."""
    flag, positional = _flag(spec, prefix), bool(spec.meta.get("positional"))
    shown = always or positional or spec.meta.get("required")
    if (value == default and not shown) or (value is None and default is None):
        return []
    const = spec.meta.get("const", MISSING)
    if const is not MISSING and value == list(const):
        return [flag]
    if spec.base is bool:
        return [flag] if value else [f"--no-{flag[2:]}"]
    if const is not MISSING or value is None or (value == [] and not positional):
        raise GptlabError(f"{flag}: {show_value(value)} cannot be given on the command line")
    values = list(map(str, value)) if spec.many else [str(value)]
    return values if positional else [flag, *values]


def to_argv(cls: type, values: dict[str, Any], first: Sequence[str] = ()) -> list[str]:
    """The arguments that `build(cls, parser.parse_args(...))` turns back into the settings
    `values` (as `Settings.to_json` gives them): positional ones first, then the flags named
    in `first` (always, in that order), then every other field that differs from its
    default. A value no flag can say is one GptlabError."""
    leaves = list(_leaves(cls, values, cls().to_json()))
    by_flag = {_flag(spec, prefix): (spec, prefix, v, d) for spec, prefix, v, d in leaves}
    unknown = [flag for flag in first if flag not in by_flag]
    if unknown:
        raise GptlabError(f"{cls.__name__} has no flag {unknown[0]}")
    rest = [flag for flag in by_flag if flag not in first]
    positional = [f for f in rest if by_flag[f][0].meta.get("positional")]
    argv: list[str] = []
    for flag in [*positional, *first, *(f for f in rest if f not in positional)]:
        argv += _field_argv(*by_flag[flag], always=flag in first)
    return argv


def command_line(verb: str, cls: type, values: dict[str, Any], first: Sequence[str] = ()) -> str:
    """`gptlab VERB ...` for the settings `values` (see `to_argv`), quoted for a shell."""
    return shlex.join(["gptlab", verb, *to_argv(cls, values, first)])
