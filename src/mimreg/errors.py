"""Errors that the CLI prints as one line: each names the problem and the fix."""


class MimregError(Exception):
    """Base class for user-facing errors (bad config, missing data, bad input)."""


class ConfigError(MimregError):
    """A config key, value or combination that cannot run."""


class DataError(MimregError):
    """A dataset that is missing, malformed, or an image that will not decode."""


class NonFiniteLossError(MimregError):
    """A loss term became NaN or inf during training."""
