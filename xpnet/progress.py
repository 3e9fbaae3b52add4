"""Progress display for fit(): a tqdm bar per epoch, one line per epoch, or nothing.

verbose=0 silent; 1 a bar (tqdm, imported lazily; plain lines when tqdm is missing); 2 one line per
epoch (for logs and CI) and, during an epoch, a progress line at most every ``line_interval``
seconds (default 30, or $XPNET_PROGRESS_SECONDS): steps done, images/s and the time left in the
epoch, all counted on the host; "auto" = a bar when stderr is a terminal, else lines.

The bar shows images/s live (host-side counting, no device sync). The running loss/accuracy need a
sync, so they are refreshed only at most ``max_refreshes`` times per epoch (every K batches, K =
ceil(steps / max_refreshes)) and no more often than every ``min_interval`` seconds.
"""
import math
import os
import sys
import time

from .callbacks import Callback
from .errors import ConfigError

LINE_INTERVAL = 30.0  # seconds between progress lines in a log (verbose=2)


def line_interval_default():
    """$XPNET_PROGRESS_SECONDS when set (a number >= 0), else LINE_INTERVAL."""
    text = os.environ.get("XPNET_PROGRESS_SECONDS", "").strip()
    if not text:
        return LINE_INTERVAL
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0.0 and math.isfinite(value)):
        raise ConfigError(f"XPNET_PROGRESS_SECONDS must be a number of seconds >= 0, got {text!r}")
    return value


def format_duration(seconds):
    """12 s, 4.5 min, 17.2 h, 3.1 days."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.1f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def write_line(text, stream=None):
    """Print a line without breaking a tqdm bar that may be on the screen."""
    stream = stream or sys.stderr
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(text, file=stream, flush=True)
        return
    tqdm.write(text, file=stream)
    stream.flush()


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
                 min_interval=0.5, line_interval=None):
        self.stream = stream or sys.stderr
        self.line_interval = line_interval_default() if line_interval is None else float(line_interval)
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
        self.last_refresh = self.last_line = self.start
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
        if self.verbose == 2:
            self._line(batch)
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

    def _line(self, batch):
        """verbose=2: a progress line when ``line_interval`` seconds have passed (host clock only)."""
        now = time.perf_counter()
        if now - self.last_line < self.line_interval or batch + 1 >= self.steps:
            return
        self.last_line = now
        elapsed = max(now - self.start, 1e-9)
        left = elapsed / (batch + 1) * (self.steps - batch - 1)
        print(f"epoch {self.epoch + 1}/{self.epochs} - step {batch + 1:,}/{self.steps:,} - "
              f"{self.images / elapsed:,.0f} img/s - {format_duration(left)} left in the epoch",
              file=self.stream, flush=True)

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


class Estimate(Callback):
    """Prints, once per fit(), the measured time per epoch and the time the remaining epochs would
    take, after ``after_steps`` training steps (timed from step ``skip_steps`` on, so start-up costs
    do not count), or at the end of the first epoch when it is shorter. ``advice`` (a line) follows
    when the estimate exceeds ``advice_after`` seconds. It synchronizes the device twice per fit()
    (the ends of the timed window) and never per batch."""

    def __init__(self, after_steps=40, skip_steps=5, advice=None, advice_after=15 * 60,
                 stops_early=False, stream=None):
        super().__init__()
        self.after_steps, self.skip_steps = int(after_steps), int(skip_steps)
        self.advice, self.advice_after = advice, float(advice_after)
        self.stops_early = bool(stops_early)
        self.stream = stream
        self.done = False
        self.text = None

    def on_train_begin(self, logs=None):
        self.done, self.text = False, None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.t0 = None

    def on_batch_end(self, batch, logs=None):
        if self.done:
            return
        if batch + 1 == self.skip_steps:
            self.model.backend.synchronize()
            self.t0 = time.perf_counter()
        elif self.t0 is not None and batch + 1 == self.skip_steps + self.after_steps:
            self.model.backend.synchronize()
            per_step = (time.perf_counter() - self.t0) / self.after_steps
            self._report(per_step * self.params["steps"], per_step,
                         f"over steps {self.skip_steps + 1}-{batch + 1}")

    def on_epoch_end(self, epoch, logs=None):
        if not self.done and (logs or {}).get("seconds"):
            seconds = float(logs["seconds"])
            self._report(seconds, seconds / max(1, self.params["steps"]), "over the first epoch",
                         remaining_from=epoch + 1)

    def _report(self, epoch_seconds, per_step, how, remaining_from=None):
        self.done = True
        p = self.params
        rate = p["batch_size"] / max(per_step, 1e-12)
        left = p["epochs"] - (self.epoch if remaining_from is None else remaining_from)
        text = (f"estimate: {format_duration(epoch_seconds)} per epoch of {p['steps']:,} steps "
                f"({rate:,.0f} images/s {how})")
        total = epoch_seconds * left
        if left > 0:
            text += (f"; the {'remaining ' if left < p['epochs'] else ''}{left} epoch"
                     f"{'s' if left != 1 else ''} would take about {format_duration(total)}"
                     + (" (at most: early stopping may end it sooner)" if self.stops_early else ""))
        self.text = text
        write_line(text, self.stream)
        if self.advice and total > self.advice_after:
            write_line(self.advice, self.stream)
