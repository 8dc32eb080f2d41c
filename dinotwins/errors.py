"""User-facing errors.

`UserError` is raised for mistakes a user can cause (a bad data spec, a missing file, an out-of-range
option). Entry points (train.py, the evaluation CLI, the app) catch it and print its message as one line,
with no traceback. Internal errors stay ordinary exceptions.
"""


class UserError(ValueError):
    """A problem with the user's input; the message names the input and the fix, on one line."""


class TrainingStopped(RuntimeError):
    """Training stopped on purpose before an update (non-finite loss or gradient, or collapse with
    --stop-on-collapse). The last good checkpoint stays; entry points print the message and exit 3."""


class TrainingInterrupted(RuntimeError):
    """Training stopped by SIGTERM or SIGINT after saving a checkpoint of the step it had finished
    (stop_signal.py). `signum` is the signal; train.py prints the message and exits 128 + signum."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.signum = signum
