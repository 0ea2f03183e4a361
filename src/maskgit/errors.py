"""The one exception type for mistakes a user can make (bad path, image, mask, label, config, checkpoint)."""


class MaskGITError(Exception):
    """A user-facing error: the message names the thing that is wrong and how to fix it.

    The CLI prints it without a traceback and exits with status 2."""
