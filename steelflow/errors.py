"""The project's own error: bad input or a state the user can fix, told in one line."""


class SteelflowError(ValueError):
    """An error whose message names the file, row or key and what was expected.

    ``steelflow`` prints these as one line; anything else is a bug and keeps its traceback.
    """
