"""The one base of every error radlab raises about its input.

A `RadlabError` is a user's mistake or an input radlab cannot use (a field, a file, a request, a
cluster address): its message names the thing at fault and says what to change, and the command
line prints it as one line with exit status 2. Any other exception is a bug and keeps its traceback.
"""


class RadlabError(Exception):
    """An input radlab cannot use; the message names it and what to set instead."""
