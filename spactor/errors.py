"""The one exception type for bad input, so every entry point can tell it from a bug.

A `UsageError` says what the person running the command gave wrong (a binding, a directory, a setting, data); its
message is one paragraph and the command line (spactor.cli.main) prints it without a traceback. Any other
exception is a fault of the program and keeps its traceback. It is a ValueError, so code that catches or tests for
ValueError on bad input keeps working.
"""


class UsageError(ValueError):
  """Bad input, named in one paragraph (printed without a traceback unless --debug or SPACTOR_DEBUG=1)."""
