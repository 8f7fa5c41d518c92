"""The runtime's one exception type: a user-facing problem whose message is the whole story (one line).

`toolkit.errors.ToolkitError` is not imported (the runtime imports nothing outside toolkit/runtime);
`toolkit run` catches this type as well.
"""


class RuntimeInputError(Exception):
    """Bad input, a bundle that must not be used, or a runtime that cannot run it: one line."""
