"""Command-line arguments generated from an options dataclass, so the dataclass is the one source.

A field becomes an argument when its metadata has a "cli" entry (option_fields.py `cli`): help,
flags, group and any add_argument keyword come from there; type and nargs from the annotation:
bool -> a flag (with a --no-FLAG beside it when the field defaults to True); Optional[X] -> X;
Tuple[X, X, X] -> three values; Tuple[X, ...] -> one or more.
The parsed values are turned back into the dataclass (lists into tuples), which checks them.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Dict, Tuple, Type, TypeVar

from mednextv2.option_fields import has_off_flag, off_flag, option_fields, option_flags

T = TypeVar("T")


def _argument_shape(annotation: Any) -> Dict[str, Any]:
    """add_argument keywords for a field's type."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Union and type(None) in args:  # Optional[X]
        annotation = next(a for a in args if a is not type(None))
        args = typing.get_args(annotation)
    if annotation is bool:
        return {"action": "store_true"}
    if typing.get_origin(annotation) in (tuple, Tuple):
        if len(args) == 2 and args[1] is Ellipsis:
            return {"type": args[0], "nargs": "+"}
        return {"type": args[0], "nargs": len(args)}
    return {"type": annotation}


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type) -> None:
    hints = typing.get_type_hints(cls)
    groups: Dict[str, Any] = {}
    for f in option_fields(cls).values():
        meta = dict(f.metadata["cli"])
        flags = option_flags(f)
        meta.pop("flags")
        group = meta.pop("group")
        off_help = meta.pop("off_help")
        kwargs = dict(_argument_shape(hints[f.name]), **{k: v for k, v in meta.items() if v is not None})
        switch = kwargs.get("action") == "store_true"
        if kwargs.get("action") == "append":  # a repeated flag gives one value each time
            kwargs.pop("nargs", None)
        if switch:
            kwargs.pop("type", None)
        if switch and has_off_flag(f):
            group = group or f.name  # --x and --no-x exclude each other
        if group and group not in groups:
            groups[group] = parser.add_mutually_exclusive_group()
        target = groups[group] if group else parser
        if flags[0].startswith("-"):
            kwargs["dest"] = f.name
            if f.default is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs.setdefault("default", f.default)
        target.add_argument(*flags, **kwargs)
        if switch and has_off_flag(f):
            target.add_argument(off_flag(flags[0]), dest=f.name, action="store_false", help=off_help)


def dataclass_from_args(cls: Type[T], args: argparse.Namespace, **values: Any) -> T:
    """The dataclass filled from parsed arguments, with `values` in place of the parsed ones
    where the command line's value is not the field's (a progress mode for a callable); its own
    checks run (InputError -> exit 2)."""
    for name in option_fields(cls):
        if name not in values and hasattr(args, name):
            value = getattr(args, name)
            values[name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
