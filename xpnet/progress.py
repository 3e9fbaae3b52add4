"""Progress display for fit(): a tqdm bar per epoch, one line per epoch, or nothing.

verbose=0 silent; 1 a bar (tqdm, imported lazily; plain lines when tqdm is missing); 2 one line per
epoch (for logs and CI); "auto" = a bar when stderr is a terminal, else lines.

The bar shows images/s live (host-side counting, no device sync). The running loss/accuracy need a
sync, so they are refreshed only at most ``max_refreshes`` times per epoch (every K batches, K =
ceil(steps / max_refreshes)) and no more often than every ``min_interval`` seconds.
"""
import math
import sys
import time

from .errors import ConfigError


def resolve_verbose(verbose, stream=None):
    """Map "auto"/0/1/2 (or True/False) to 0, 1 or 2."""
    if verbose == "auto":
        stream = stream or sys.stderr
        return 1 if getattr(stream, "isatty", lambda: False)() else 2
    if verbose is True:
        return 1
    if verbose is False or verbose is None:
        return 0
    if verbose in (0, 1, 2):
        return int(verbose)
    raise ConfigError(f"verbose must be 'auto', 0, 1 or 2, got {verbose!r}")


def format_logs(logs):
    parts = []
    for key, value in logs.items():
        if key in ("seconds", "images_per_s"):
            continue
        if isinstance(value, float):
            parts.append(f"{key} {value:.3e}" if key == "lr" else f"{key} {value:.4f}")
        else:
            parts.append(f"{key} {value}")
    return " - ".join(parts)


class Progress:
    """Reports the progress of one fit() call."""

    def __init__(self, verbose="auto", epochs=1, steps=1, stream=None, max_refreshes=8,
                 min_interval=0.5):
        self.stream = stream or sys.stderr
        self.verbose = resolve_verbose(verbose, self.stream)
        self.epochs = int(epochs)
        self.steps = int(steps)
        self.max_refreshes = int(max_refreshes)
        self.every = max(1, math.ceil(self.steps / max(1, self.max_refreshes)))
        self.min_interval = float(min_interval)
        self.bar = None
        self._tqdm = None
        if self.verbose == 1:
            try:
                from tqdm.auto import tqdm
                self._tqdm = tqdm
            except ImportError:
                self._tqdm = None
        self.refreshes = 0

    def epoch_begin(self, epoch):
        self.epoch = epoch
        self.start = time.perf_counter()
        self.last_refresh = self.start
        self.images = 0
        self.refreshes = 0
        if self.verbose == 1 and self._tqdm is not None:
            self.bar = self._tqdm(total=self.steps, desc=f"epoch {epoch + 1}/{self.epochs}",
                                  unit="batch", file=self.stream, leave=True, dynamic_ncols=True)

    def wants_refresh(self, batch):
        """Whether to pay a sync for the running loss after ``batch`` (0-based)."""
        if self.verbose != 1 or self.refreshes >= self.max_refreshes:
            return False
        if (batch + 1) % self.every != 0 and batch + 1 != self.steps:
            return False
        return time.perf_counter() - self.last_refresh >= self.min_interval

    def batch_end(self, batch, n_images, running=None):
        """``running`` (a dict of host floats) is passed only when wants_refresh said so."""
        self.images += n_images
        if self.verbose != 1:
            return
        rate = self.images / max(time.perf_counter() - self.start, 1e-9)
        if running is not None:
            self.refreshes += 1
            self.last_refresh = time.perf_counter()
        if self.bar is not None:
            self.bar.update(1)
            post = {"img/s": f"{rate:,.0f}"}
            if running is not None:
                post.update({k: f"{v:.4f}" for k, v in running.items()})
                self.bar.set_postfix(post, refresh=False)
            elif (batch + 1) % self.every == 0:
                self.bar.set_postfix(post, refresh=False)
        elif running is not None:
            print(f"epoch {self.epoch + 1}/{self.epochs} batch {batch + 1}/{self.steps} - "
                  f"{rate:,.0f} img/s - {format_logs(running)}", file=self.stream, flush=True)

    def epoch_end(self, epoch, logs):
        if self.verbose == 0:
            return
        seconds = logs.get("seconds", time.perf_counter() - self.start)
        rate = self.images / max(seconds, 1e-9)
        text = f"{seconds:.1f}s - {rate:,.0f} img/s - {format_logs(logs)}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{rate:,.0f} img/s - {format_logs(logs)}", refresh=True)
            self.bar.close()
            self.bar = None
        else:
            print(f"epoch {epoch + 1}/{self.epochs} - {text}", file=self.stream, flush=True)

    def message(self, text):
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None
