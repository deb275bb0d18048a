"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(Exception):
    """Bad input (a path, an option value, a data problem) explained in one sentence.

    The CLI prints its message and exits non-zero without a traceback; any other exception is
    a bug in tfpipeline and keeps its traceback.
    """
