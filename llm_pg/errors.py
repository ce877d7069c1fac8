"""Errors that the CLI reports as one line (exit code 2) instead of a traceback."""


class LlmPgError(Exception):
    """Bad input that the user can fix; the message names the field and the fix."""


class ConfigError(LlmPgError, ValueError):
    """An invalid configuration key, value or combination."""


class DataError(LlmPgError, ValueError):
    """A data source that is missing, empty or lacks the configured fields."""


class ModelLoadError(LlmPgError, OSError):
    """A model or tokenizer that cannot be found or loaded."""
