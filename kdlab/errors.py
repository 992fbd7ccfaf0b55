"""User-facing errors.

A :class:`KdlabError` is a problem with the user's input (a file, a field, a value). The CLI prints its
message as one line, exits with status 2 and writes no outputs. Anything else is a bug and keeps its traceback.
"""


class KdlabError(Exception):
    """Bad input: the message names the culprit (file, field or value) in one line."""
