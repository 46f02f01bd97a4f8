"""Errors that are the user's to fix: the CLI prints their message on one line, without a traceback."""


class ElmtuneError(Exception):
    """Base class of errors whose message alone tells the user what went wrong and what to do."""


class ModelNotFoundError(ElmtuneError):
    """A model name is neither a preset, a local directory, nor a reachable hub id."""


class UsageError(ElmtuneError):
    """A flag, recipe field or configuration value is invalid: the CLI exits with code 2 (bad usage), like argument
    parsing errors, instead of 1 (a failure while doing the work)."""
