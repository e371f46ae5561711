class ShardsError(Exception):
    """A problem the user can fix (bad path, wrong archive, mismatched classes); the message
    is one sentence naming the thing and the fix, printed without a traceback."""
