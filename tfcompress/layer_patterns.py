"""Choosing layers by name, regular expression or class name (shared by the technique modules).

Example:
    patterns = check_patterns(["conv1", "block_.*", "Dense"], "exclude", LowRankError)
    chosen = [l for l in model.layers if any(matches(p, l) for p in patterns)]
"""

import re


def check_patterns(patterns, name, error_class):
    """A tuple of patterns; raises `error_class` naming `name` for one that is not a regex."""
    if isinstance(patterns, (str, re.Pattern)):
        patterns = [patterns]
    patterns = tuple(patterns)
    for pattern in patterns:
        try:
            re.compile(pattern)
        except (TypeError, re.error) as e:
            raise error_class(f"{name} entry {pattern!r} is not a layer name, class name or "
                              f"regular expression: {e}") from None
    return patterns


def matches(pattern, layer):
    """True if `pattern` matches the layer's whole name or is its class name."""
    return re.fullmatch(pattern, layer.name) is not None or pattern == type(layer).__name__
