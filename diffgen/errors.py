"""Error types that carry a one-line message and the exit code the CLI should use.

Exit code 2 means bad input (argument, file, config); 1 means a failure at run time.
"""


class DiffgenError(Exception):
    """Base class: ``str(error)`` is the one line shown to the user."""

    exit_code = 1


class InputError(DiffgenError):
    """The user gave something unusable: exit code 2."""

    exit_code = 2


class ConfigError(InputError):
    """A config file or value is wrong; the message names the key."""


class CheckpointError(InputError):
    """A checkpoint file is missing, truncated, not safetensors or of an unknown version."""


class TextEncoderError(DiffgenError):
    """The text encoder cannot be built or its weights cannot be fetched."""


class Terminated(BaseException):  # named for the signal, like KeyboardInterrupt
    """SIGTERM arrived: the command ends like Ctrl-C (one line), with exit code 143 = 128 + 15."""

    exit_code = 143
