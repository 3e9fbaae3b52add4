"""The library's own error types. Every error xpnet raises on purpose is one of these."""


class XpnetError(Exception):
    """Base class of every error raised by xpnet on purpose."""


class ShapeError(XpnetError, ValueError):
    """An array had the wrong shape, rank or dtype for the layer or function it was given to."""


class BackendError(XpnetError, RuntimeError):
    """A backend was asked for that does not exist or cannot run here."""


class ConfigError(XpnetError, ValueError):
    """A model, layer, optimizer or recipe was configured with an invalid value."""


class DataError(XpnetError, ValueError):
    """A dataset file or array is missing, corrupt or malformed."""


class TrainingError(XpnetError, RuntimeError):
    """Training could not continue (a NaN loss, a failed resume, ...)."""
