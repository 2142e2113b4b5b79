"""Choosing layers by name, regular expression or class: one meaning for every technique.

A pattern selects a layer when it is
  - a class (`keras.layers.Dense`): the layer is an instance of it;
  - a string equal to the layer's name (even one with regex characters, "tf.math.add");
  - a string that is a regular expression matching the whole name ("block_.*");
  - a string equal to the layer's class name ("Dense").
Pruning's, clustering's, QAT's (`exclude_layers`), channel pruning's, low-rank's
and the regularizers' `exclude=` / `per_layer=` all use `matches`; QAT's
`exclude_types` uses `matches_class` (class names and classes only).

Example:
    patterns = check_patterns(["conv1", "block_.*", "Dense"], "exclude", LowRankError)
    chosen = [l for l in walk(model) if any(matches(p, l) for p in patterns)]
"""

import re

from tfcompress._compat import is_graph_network


def check_patterns(patterns, name, error_class, _wording=None):
    """A tuple of patterns; raises `error_class` naming `name` for one that is not a regex.

    A single string or class is one pattern; classes pass as they are.
    """
    if isinstance(patterns, (str, re.Pattern, type)):
        patterns = [patterns]
    patterns = tuple(patterns)
    wording = _wording or (lambda pattern, e: f"{name} entry {pattern!r} is not a layer name, "
                           f"class name or regular expression: {e}")
    for pattern in patterns:
        if isinstance(pattern, type):
            continue
        try:
            re.compile(pattern)
        except (TypeError, re.error) as e:
            raise error_class(wording(pattern, e)) from None
    return patterns


def check_patterns_or_classes(patterns, name, error_class):
    """Like `check_patterns`, and a class must be a tf_keras layer class (a Keras 3 class is
    refused by name: models here are tf_keras models)."""
    from tfcompress.keras import keras
    patterns = check_patterns(patterns, name, error_class, lambda pattern, e: (
        f"{name}: {pattern!r} is not a layer name, regex or layer class ({e})"))
    for pattern in patterns:
        if not isinstance(pattern, type):
            continue
        if (pattern.__module__ or "").split(".")[0] == "keras":
            raise error_class(f"{name}: {pattern.__module__}.{pattern.__name__} is a Keras 3 "
                              f"class; models here are tf_keras models: give the class name "
                              f"{pattern.__name__!r} or tf_keras's class")
        if not issubclass(pattern, keras.layers.Layer):
            raise error_class(f"{name}: {pattern.__name__} is not a Keras layer class")
    return patterns


def matches(pattern, layer):
    """True if `pattern` selects `layer` (see the module docstring)."""
    if isinstance(pattern, type):
        return isinstance(layer, pattern)
    if isinstance(pattern, re.Pattern):
        return pattern.fullmatch(layer.name) is not None
    return (pattern == layer.name or pattern == type(layer).__name__
            or re.fullmatch(pattern, layer.name) is not None)


def matches_class(kind, layer):
    """True if `kind` (a class, or a class name) is the layer's class (or a base, for a class)."""
    if isinstance(kind, type):
        return isinstance(layer, kind)
    return type(layer).__name__ == kind


def is_graph_model(layer):
    """True for a functional or Sequential model: one whose layers can be walked."""
    from tfcompress.keras import keras
    return isinstance(layer, keras.Model) and (
        is_graph_network(layer) or isinstance(layer, keras.Sequential))


def walk(model):
    """All layers of `model` in order, looking inside nested functional models."""
    for layer in model.layers:
        if is_graph_model(layer):
            yield from walk(layer)
        else:
            yield layer


def describe(layer):
    """"layer 'conv1' (Conv2D)": how error messages name a layer."""
    return f"layer {layer.name!r} ({type(layer).__name__})"


def unmatched(patterns, layers, match=matches):
    """The patterns that select none of `layers` (to refuse a typo rather than ignore it)."""
    layers = list(layers)
    return [p for p in patterns if not any(match(p, layer) for layer in layers)]
