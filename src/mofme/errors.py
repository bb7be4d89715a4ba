"""One exception type for every user-facing failure.

The CLI turns a ``MofmeError`` into a single line on stderr and a non-zero exit code, so
messages must be complete sentences that name the offending file or option.
"""


class MofmeError(Exception):
    """A problem with the user's input (file, option, checkpoint) rather than a bug."""


def one_line(text: str) -> str:
    """``text`` with control characters escaped (``\\n`` -> ``\\\\n``), for one-line messages.

    File names may hold newlines or terminal escapes; printed raw they would forge extra lines
    in an error message or a summary (e.g. a fake ``restored 5 of 5``).
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
