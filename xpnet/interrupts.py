"""Interrupts held back while a file is written.

The command line's Ctrl-C and SIGTERM handlers (xpnet.cli) call ``interrupt()``: it raises
KeyboardInterrupt at once, or, while a ``deferred()`` block runs (an atomic file write, the
in-memory .npz it writes), when that block ends. A KeyboardInterrupt raised inside zipfile or
between ``mkstemp`` and its cleanup could leave a temporary file or turn into an unrelated error
(zipfile's ``AttributeError: ... '_writing'``); a write either happens whole or not at all anyway,
so holding the interrupt for its few milliseconds loses nothing. Without the command line's
handlers (a script calling fit), Python's own Ctrl-C handler raises where it lands, as usual.
"""
import contextlib

_depth = 0
_pending = []


@contextlib.contextmanager
def deferred():
    """Hold interrupts (``interrupt()`` calls) until the block ends, then raise one
    KeyboardInterrupt if any came (when the block itself raised, that error goes on instead and
    the held interrupt is dropped: the program is stopping either way)."""
    global _depth
    _depth += 1
    try:
        yield
    except BaseException:
        if _depth == 1:
            _pending.clear()
        raise
    finally:
        _depth -= 1
    if _depth == 0 and _pending:
        _pending.clear()
        raise KeyboardInterrupt


def interrupt():
    """KeyboardInterrupt now, or at the end of the ``deferred()`` block in progress."""
    if _depth:
        _pending.append(True)
        return
    raise KeyboardInterrupt
