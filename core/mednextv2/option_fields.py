"""Options dataclasses as the one source of their command-line options.

A field is an option when its metadata comes from `cli(...)`: cli/dataclass_args.py builds the
parser from it, and `option_arguments` writes the arguments that give option fields their values,
so a program that starts the engine (the Slicer modules) spells each flag as the parser does and a
renamed option is renamed for it too. Standard library only: the Slicer panels import it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Optional, Tuple


def cli(help: str = "", *flags: str, group: Optional[str] = None, off_help: Optional[str] = None,
        **argparse: Any) -> Dict[str, Any]:
    """Field metadata making an options field a command-line option: its help, flag names (default
    --field-name; a name without a dash is positional), a mutually exclusive group, the help of the
    --no-FLAG that a bool defaulting to True also gets (`off_help`), and any other add_argument
    keyword (choices, metavar; type and default where the command line's value is not the field's,
    e.g. a progress mode naming a callable). The type and nargs follow from the field's annotation."""
    return {"cli": dict(help=help, flags=flags, group=group, off_help=off_help, **argparse)}


def option_fields(cls: type) -> Dict[str, "dataclasses.Field[Any]"]:
    """The fields of `cls` that are command-line options, by name, in field order."""
    return {f.name: f for f in dataclasses.fields(cls) if f.metadata.get("cli")}


def option_flags(f: "dataclasses.Field[Any]") -> Tuple[str, ...]:
    return f.metadata["cli"]["flags"] or ("--" + f.name.replace("_", "-"),)


def off_flag(flag: str) -> str:
    """The flag that turns off a bool option defaulting to True: --tta -> --no-tta."""
    return "--no-" + flag.lstrip("-")


def has_off_flag(f: "dataclasses.Field[Any]") -> bool:
    return f.default is True


def option_arguments(cls: type, **values: Any) -> List[str]:
    """The arguments giving the named options of `cls` these values, in field order: nothing for
    None, an empty list or False without an off flag, the flag for True, the off flag for False, else the
    flag and each value. A name that is no option of `cls` is a ValueError."""
    options = option_fields(cls)
    unknown = sorted(set(values) - set(options))
    if unknown:
        raise ValueError(f"{cls.__name__} has no command-line option {', '.join(unknown)}")
    args: List[str] = []
    for name, f in options.items():
        value = values.get(name)
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        flag = option_flags(f)[0]
        if isinstance(value, bool):
            if value or has_off_flag(f):
                args.append(flag if value else off_flag(flag))
        elif isinstance(value, (list, tuple)):
            args += [flag, *map(str, value)]
        else:
            args += [flag, str(value)]
    return args
