"""One exception type for problems the user can fix, so the command line can report them in one line."""


class SAMMed3DError(Exception):
    """A problem with the user's input (a file, a point, a checkpoint): the message says what and what to do."""
