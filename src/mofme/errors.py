"""One exception type for every user-facing failure.

The CLI turns a ``MofmeError`` into a single line on stderr and a non-zero exit code, so
messages must be complete sentences that name the offending file or option.
"""


class MofmeError(Exception):
    """A problem with the user's input (file, option, checkpoint) rather than a bug."""
