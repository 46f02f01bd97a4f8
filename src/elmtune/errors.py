"""Errors that are the user's to fix: the CLI prints their message on one line, without a traceback."""


class ElmtuneError(Exception):
    """Base class of errors whose message alone tells the user what went wrong and what to do."""


class ModelNotFoundError(ElmtuneError):
    """A model name is neither a preset, a local directory, nor a reachable hub id."""


class UsageError(ElmtuneError):
    """A flag, recipe field or configuration value is invalid.

    The CLI exits with code 2 (bad usage), like argument parsing errors, instead of 1 (a failure while doing the work).
    """


class ConfigError(UsageError, ValueError):
    """A recipe key, config-file key or flag value is invalid; the message names the key (``train.lr``) or the flag.

    Attributes:
        key: The dotted key at fault (``train.lr``), when one is; the CLI uses it to name the flag that set it.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        """Create the error.

        Args:
            message: One line that names the key and says what to do.
            key: The dotted key at fault, if any.
        """
        super().__init__(message)
        self.key = key
