"""The one exception type the command line turns into a one-line message."""


class PnnhError(ValueError):
    """Bad input from the user: an unknown name, a missing file, an impossible option.

    The message says what is wrong and how to fix it; `pnnh` prints it as
    ``error: <message>`` and exits with status 2, without a traceback.
    """
