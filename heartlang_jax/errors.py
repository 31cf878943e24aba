"""The project's own error types: raised where the input is judged, shown to users as one line.

Every error a user can cause derives from `HeartLangError` (the signal layer's `RecordError` and
`TokenizerError`, the builders' `DownloadError`, ...), so `main.py` catches that one class and prints
it as one line without a traceback; every other exception is a bug and keeps its traceback.
"""


class HeartLangError(Exception):
    """Base of the errors that describe a problem with the user's input, not with the code."""


class ConfigError(HeartLangError, ValueError):
    """A config field that is unknown, missing, of the wrong type or out of range; names the field."""


class DatasetLayoutError(HeartLangError, FileNotFoundError):
    """A dataset folder is missing or incomplete; the message says what to put where."""


class CheckpointError(HeartLangError, RuntimeError):
    """A checkpoint or run folder is missing, unreadable or belongs to another configuration."""
