"""Command-line arguments generated from an options dataclass, so the dataclass is the one source.

A field becomes an argument when its metadata has a "cli" entry (train/options.py `cli`): help,
flags, group and any add_argument keyword come from there; type and nargs from the annotation:
bool -> a flag; Optional[X] -> X; Tuple[X, X, X] -> three values; Tuple[X, ...] -> one or more.
The parsed values are turned back into the dataclass (lists into tuples), which checks them.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Dict, Tuple, Type, TypeVar

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
    for f in dataclasses.fields(cls):
        if not f.metadata.get("cli"):
            continue
        meta = dict(f.metadata["cli"])
        flags = meta.pop("flags") or ("--" + f.name.replace("_", "-"),)
        group = meta.pop("group")
        kwargs = dict(_argument_shape(hints[f.name]), **{k: v for k, v in meta.items() if v is not None})
        if kwargs.get("action") == "store_true":
            kwargs.pop("type", None)
        if group and group not in groups:
            groups[group] = parser.add_mutually_exclusive_group()
        target = groups[group] if group else parser
        if flags[0].startswith("-"):
            kwargs["dest"] = f.name
            if f.default is dataclasses.MISSING:
                kwargs["required"] = True
            else:
                kwargs["default"] = f.default
        target.add_argument(*flags, **kwargs)


def dataclass_from_args(cls: Type[T], args: argparse.Namespace) -> T:
    """The dataclass filled from parsed arguments; its own checks run (InputError -> exit 2)."""
    values = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("cli") and hasattr(args, f.name):
            value = getattr(args, f.name)
            values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)
