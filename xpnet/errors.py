"""The library's own error types. Every error xpnet raises on purpose is one of these."""


class XpnetError(Exception):
    """Base class of every error raised by xpnet on purpose. ``every_rank`` is True on an error
    that every rank of a data-parallel job raises alike (decided on values the ranks agreed on):
    the command line then prints it on rank 0 only (``on_every_rank`` marks one)."""

    every_rank = False


def on_every_rank(exc):
    """``exc``, marked as raised alike by every rank of a data-parallel job."""
    exc.every_rank = True
    return exc


class ShapeError(XpnetError, ValueError):
    """An array had the wrong shape, rank or dtype for the layer or function it was given to."""


class BackendError(XpnetError, RuntimeError):
    """A backend was asked for that does not exist or cannot run here."""


class NoGPUError(BackendError):
    """No usable GPU. ``reason`` says why; ``remedy`` what to do, with ``{cpu}`` where the way to
    ask for the CPU goes: the message words it for the Python API (``device='cpu'``), the command
    line prints ``worded("--device cpu")``."""

    def __init__(self, reason, remedy="use {cpu}"):
        self.reason, self.remedy = reason, remedy
        super().__init__(self.worded("device='cpu'"))

    def worded(self, cpu):
        return f"{self.reason}; {self.remedy.replace('{cpu}', cpu)}"


class ConfigError(XpnetError, ValueError):
    """A model, layer, optimizer or recipe was configured with an invalid value."""


class BatchSizeError(ConfigError):
    """A batch size that does not suit the data or the ranks. ``text`` says why, with
    ``{batch_size}`` where the setting's name goes; ``api_only`` is a way out that only the Python
    API has (``steps_per_epoch``, ...). The message words it for the API (``batch_size``, then
    ``api_only``); the command line prints ``worded("--batch-size")``."""

    def __init__(self, text, api_only=""):
        self.text, self.api_only = text, api_only
        super().__init__(self.worded("batch_size") + api_only)

    def worded(self, batch_size):
        return self.text.replace("{batch_size}", batch_size)


class DataError(XpnetError, ValueError):
    """A dataset file or array is missing, corrupt or malformed."""


class TrainingError(XpnetError, RuntimeError):
    """Training could not continue (a NaN loss, a failed resume, ...)."""


class TrainingInterrupted(KeyboardInterrupt):
    """fit() was interrupted (Ctrl-C). The message says what was kept: ``epoch`` (1-based, the one
    interrupted), ``saved_epoch`` (1-based, the last one in the checkpoint, or None), ``checkpoint``
    (its path, or None) and ``folder`` (fit's ``checkpoint=`` folder, or None)."""

    def __init__(self, epoch, saved_epoch=None, checkpoint=None, folder=None):
        self.epoch, self.saved_epoch, self.checkpoint, self.folder = epoch, saved_epoch, checkpoint, folder
        super().__init__(f"fit interrupted during epoch {epoch}: "
                         + self.kept(f"continue with fit(..., checkpoint={folder!r}, resume=True)"))

    def kept(self, how_to_continue):
        """What was kept, ending with ``how_to_continue`` when there is a checkpoint."""
        if self.saved_epoch is not None:
            return (f"the last complete epoch ({self.saved_epoch}) is saved in {self.checkpoint}; "
                    f"{how_to_continue}")
        if self.folder is not None:
            return f"no epoch had completed, so {self.folder} holds no checkpoint yet"
        return "no checkpoint was kept (pass checkpoint=DIR to keep one)"
