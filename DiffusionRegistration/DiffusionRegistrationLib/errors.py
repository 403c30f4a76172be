"""The one error type users see, and the signal that a run was cancelled."""


class RegistrationError(Exception):
    """Bad input or an impossible request, with a message that says which file, what is wrong and the fix."""


class Cancelled(Exception):
    """Raised from a progress callback to stop a run; outputs already written stay untouched."""


class Interrupted(KeyboardInterrupt):
    """A termination signal (SIGTERM, SIGHUP) turned into an exception, so outputs are cleaned up as on Ctrl-C."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum
