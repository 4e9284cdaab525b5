"""The one exception type for a user's mistake: a bad config field, flag, file or prompt.

Commands print a `UserError` as one line, `error: <message>`, and exit with status 2, before any
work starts where the mistake can be seen up front; every other exception is a bug or an
environment failure and keeps its traceback. A message names what is wrong and how to fix it.
`UserError` is a `ValueError`, so library callers that catch ValueError keep working.
"""

from __future__ import annotations


class UserError(ValueError):
  """A mistake in what the user gave (config, flags, files): shown as one line, no traceback."""
