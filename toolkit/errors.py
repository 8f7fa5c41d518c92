"""The one exception type the CLI turns into a one-line message and a non-zero exit."""


class ToolkitError(Exception):
    """A user-facing problem (bad input, bad checkpoint, ...): the message is the whole story."""
