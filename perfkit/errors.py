"""The one base class of user-facing errors.

A `UserError` means bad input: a config key, a file, a command-line value or a checkpoint that
cannot be used. The commands report it in one line (the message names the file, line or
`$.section.key`) and exit non-zero. Every other exception is a bug in perfkit, torch or the
environment and keeps its traceback.

It subclasses ValueError so that callers catching ValueError keep working; the commands catch
`UserError`, never ValueError, so a ValueError bug inside the model or the loop is not mistaken
for bad input.
"""


class UserError(ValueError):
    """Bad input, reported in one line that names the file, line or config key."""
