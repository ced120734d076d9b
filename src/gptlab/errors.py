"""The one exception type for mistakes a user can fix (bad path, bad flag, bad file).

The CLI prints these as a single line and exits non-zero; anything else is a bug and keeps
its traceback.
"""


class GptlabError(Exception):
    """A user-facing error: its message says what is wrong and where (file, line, field)."""


class Interrupted(GptlabError):
    """A job stopped by SIGINT after saving its state; rerunning it with --resume continues."""
