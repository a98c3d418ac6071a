"""Argument checks, written once: every bad value ends in one message naming key and value."""

import math
import numbers

from elastic_keras.errors import ElasticKerasError



def is_int(value):
    """An integer that is not a boolean (`batch_size=true` is refused)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)


def check_int(what, value, minimum, optional=False):
    """`value` as an int >= minimum (None passes when optional)."""
    if value is None and optional:
        return None
    if not is_int(value) or value < minimum:
        raise ElasticKerasError(f"{what} must be {'null or ' if optional else ''}an integer "
                                f">= {minimum}; received {value!r}")
    return int(value)


def check_number(what, value, low, high, low_open=False, high_open=True, optional=False):
    """`value` as a float in the interval [low, high) (ends as given)."""
    if value is None and optional:
        return None
    inside = is_number(value) and (value > low if low_open else value >= low) and \
        (high is None or (value < high if high_open else value <= high))
    if not inside:
        interval = (f"{'(' if low_open else '['}{low}, "
                    f"{'inf)' if high is None else f'{high}' + (')' if high_open else ']')}")
        raise ElasticKerasError(f"{what} must be {'null or ' if optional else ''}a number in "
                                f"{interval}; received {value!r}")
    return float(value)


def check_choice(what, value, valid):
    if not isinstance(value, str) or value not in valid:
        raise ElasticKerasError(f"{what} must be one of {', '.join(valid)}; received {value!r}")
    return value


def check_bool(what, value):
    if not isinstance(value, bool):
        raise ElasticKerasError(f"{what} must be true or false; received {value!r}")
    return value








