"""The one base class of user-facing errors.

A `UserError` means bad input: a config key, a file, a command-line value or a checkpoint that
cannot be used. The commands report it in one line (the message names the file, line or
`$.section.key`) and exit non-zero. Every other exception is a bug in perfkit, torch or the
environment and keeps its traceback.

It subclasses ValueError so that callers catching ValueError keep working; the commands catch
`UserError`, never ValueError, so a ValueError bug inside the model or the loop is not mistaken
for bad input.
"""

import os
import sys


class UserError(ValueError):
    """Bad input, reported in one line that names the file, line or config key."""


def print_line(text: str) -> None:
    """Print one line to stderr in a single write(2).

    Ranks launched by torchrun share one stderr pipe; `print` may issue the text and its newline
    as two writes (unbuffered stderr), so two ranks' lines can run into one. One write of at most
    PIPE_BUF bytes is atomic on a pipe; a longer line is still written whole, in order. A stderr
    that is not a file descriptor (a test's capture, a wrapper) gets the line in one write() call."""
    line = text.rstrip("\n") + "\n"
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        sys.stderr.write(line)
        sys.stderr.flush()
        return
    sys.stderr.flush()  # whatever this process printed before comes first
    data = line.encode("utf-8", "replace")
    while data:
        data = data[os.write(fd, data):]
