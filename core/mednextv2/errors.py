"""Exceptions shared by every stage; each carries the CLI exit code it maps to."""


class MedNeXtError(Exception):
    """Base class. `exit_code` is what the CLI returns for it."""

    exit_code = 1


class InputError(MedNeXtError, ValueError):
    """Bad input from the user: file, image, option, model or bundle. Exit code 2."""

    exit_code = 2


class ResourceError(MedNeXtError):
    """Out of memory, disk or another resource. Exit code 3."""

    exit_code = 3


class Cancelled(MedNeXtError):
    """SIGINT/SIGTERM or a user cancel. Exit code 130."""

    exit_code = 130
