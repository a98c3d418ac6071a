"""The package's one error type: bad input ends in one clear message."""


class ElasticKerasError(Exception):
    """A user-facing error: the CLI prints its message and exits with status 2."""
