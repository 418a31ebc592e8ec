"""What reaches a terminal or a log line from outside: file names and messages that may carry them.

A file name may hold an escape sequence (which a terminal would obey) or a newline (which would split a summary
line, and could forge one). Such characters are shown escaped, the way Python writes them in a string literal;
every printable character, accented letters included, is shown as is.
"""

from __future__ import annotations


def shown(text: object) -> str:
    """``text`` with every non-printable character escaped (\\n, \\x1b, \\u2028 ...)."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in s)
