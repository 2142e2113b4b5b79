"""Model surgery: rebuild a functional / Sequential model with some layers replaced.

Channel pruning (thinner layers, 0/1 channel masks in front of layers) and
low-rank factorization (one layer becomes two) both walk a model's layer calls
in order and call new layers on the new tensors; this is that walk, once.

Example:
    def replace(layer, copy):
        if layer.name != "fc":
            return None                       # an exact copy, weights included
        return copy(layer, [w * 0.5 for w in layer.get_weights()])
    halved = transform_model(model, replace)

`rebuild_model` is the low-level walk (one callback a layer call);
`transform_model` adds what every user of it needs: one replacement a layer (a
shared layer stays shared), clones made from the layer's config, and their
weights set once the new model is built.
"""

from tfcompress._compat import (input_layers, is_graph_network, nested_inputs, nested_outputs,
                                nodes_by_depth)
from tfcompress.errors import TfcompressError
from tfcompress.keras import ensure_tf_keras_model, keras, tf

__all__ = ["SurgeryError", "require_graph_model", "graph_nodes", "clone_layer", "rebuild_model",
           "transform_model"]


class SurgeryError(TfcompressError, ValueError):
    """A model or layer that cannot be rebuilt (the default; callers pass their own class)."""


def require_graph_model(model, error=SurgeryError):
    """`model` if it is a tf_keras model with a layer graph; raises `error` if not.

    Raises:
        error: a subclassed or unbuilt Sequential model.
        TypeError: a Keras 3 model or not a model.
    """
    model = ensure_tf_keras_model(model)
    if not is_graph_network(model):
        raise error(f"{type(model).__name__} {model.name!r} is a subclassed (or unbuilt "
                    "Sequential) model, whose layer graph cannot be read: build it "
                    "functionally or give the Sequential an Input")
    return model


def graph_nodes(model, error=SurgeryError):
    """The layer calls of a functional or Sequential model, in an order that runs it.

    Returns:
        A list of tf_keras `Node`s (node.layer, node.keras_inputs, node.outputs),
        model inputs left out.
    """
    model = require_graph_model(model, error)
    by_depth = nodes_by_depth(model)
    return [node for depth in sorted(by_depth, reverse=True)
            for node in by_depth[depth] if not node.is_input]


class _Same:
    """A tensor_dict entry for Node.map_arguments, which pops one use per consumer."""

    def __init__(self, value):
        self.value = value

    def pop(self):
        return self.value


def clone_layer(layer, error=SurgeryError, **changes):
    """A new, unbuilt layer with `layer`'s config (and `changes`).

    Raises:
        error: the layer has no get_config().
    """
    try:
        return layer.__class__.from_config(dict(layer.get_config(), **changes))
    except NotImplementedError as e:
        raise error(f"cannot copy layer {layer.name!r} ({type(layer).__name__}): "
                    f"{e}; give it a get_config()") from e


def rebuild_model(model, call_layer, error=SurgeryError):
    """Rebuilds a functional / Sequential model node by node as a functional model.

    Args:
        model: the model.
        call_layer: `fn(node, args, kwargs) -> outputs`, called for every layer
            call in order with the new input tensors (node.layer is the
            original layer); returns the new outputs (same structure).
        error: raised for a model without a layer graph.

    Returns:
        A new functional model with the same inputs, outputs and name.
    """
    model = require_graph_model(model, error)
    tensors, inputs = {}, []
    for tensor, layer in zip(model.inputs, input_layers(model)):
        new = keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=layer.name)
        tensors[str(id(tensor))] = _Same(new)
        inputs.append(new)
    for node in graph_nodes(model, error):
        args, kwargs = node.map_arguments(tensors)
        outputs = call_layer(node, args, kwargs)
        for ref, new in zip(node.flat_output_ids, tf.nest.flatten(outputs)):
            tensors[ref] = _Same(new)
    outputs = [tensors[str(id(t))].value for t in model.outputs]
    return keras.Model(tf.nest.pack_sequence_as(nested_inputs(model), inputs),
                       tf.nest.pack_sequence_as(nested_outputs(model), outputs),
                       name=model.name)


def transform_model(model, replace, error=SurgeryError):
    """Rebuilds `model` with each layer copied or replaced, weights set.

    Args:
        model: a functional or Sequential model (left untouched).
        replace: `fn(layer, copy) -> call or None`, asked once for every layer
            (a layer called twice reuses its answer). None copies the layer
            with its weights; otherwise `call(*args, **kwargs) -> outputs`
            stands for the layer: a new layer, or a function calling several.
            `copy(layer, weights=None, **changes)` clones `layer` with config
            `changes` and remembers `weights` (default: the layer's) to set on
            the clone once the new model is built.
        error: raised for a model without a layer graph or a layer without a
            config.

    Returns:
        The new functional model (same inputs, outputs and name).
    """
    calls, pending = {}, []

    def copy(layer, weights=None, **changes):
        new = clone_layer(layer, error, **changes)
        pending.append((new, layer.get_weights() if weights is None else weights))
        return new

    def call_layer(node, args, kwargs):
        layer = node.layer
        if id(layer) not in calls:
            call = replace(layer, copy)
            calls[id(layer)] = copy(layer) if call is None else call
        return calls[id(layer)](*args, **kwargs)

    new_model = rebuild_model(model, call_layer, error)
    for new, weights in pending:
        new.set_weights(weights)
    return new_model
