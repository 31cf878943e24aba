"""The project's own error types: raised where the input is judged, shown to users as one line.

`main.py` prints these (and the data layer's `DatasetLayoutError`, `DownloadError` and
`TokenizerError`) without a traceback; every other exception is a bug and keeps its traceback.
"""


class HeartLangError(Exception):
    """Base of the errors that describe a problem with the user's input, not with the code."""


class ConfigError(HeartLangError, ValueError):
    """A config field that is unknown, missing, of the wrong type or out of range; names the field."""


class CheckpointError(HeartLangError, RuntimeError):
    """A checkpoint or run folder is missing, unreadable or belongs to another configuration."""
