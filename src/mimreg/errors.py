"""Errors that the CLI prints as one line: each names the problem and the fix."""


class MimregError(Exception):
    """Base class for user-facing errors (bad config, missing data, bad input)."""


class ConfigError(MimregError):
    """A config key, value or combination that cannot run."""


class DataError(MimregError):
    """A dataset that is missing, malformed, or an image that will not decode."""


class NonFiniteLossError(MimregError):
    """A loss term became NaN or inf during training."""


class RunInterrupted(MimregError):
    """A run stopped on SIGTERM or SIGINT after writing a checkpoint; it continues with --resume."""

    def __init__(self, signal_name: str, step: int, checkpoint):
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint
        super().__init__(f"stopped by {signal_name} at step {step}; checkpoint {checkpoint} written")
