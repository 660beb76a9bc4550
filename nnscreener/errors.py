"""The one error class for bad user input and configuration.

CLIs catch it and print its message without a traceback; ``assert`` stays for internal invariants only.
"""


class ScreenerError(Exception):
    """A user-facing error: bad input, a missing file or model, an invalid option. The message names the file
    or value at fault."""
