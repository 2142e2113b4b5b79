"""One name table for tfcompress's serializable objects (schedules, distillation losses).

Each kind of object keeps an explicit table of the names it answers to (not a
registry filled by import side effects). Reading goes through Keras's own
`keras.utils.deserialize_keras_object`, with the table as `custom_objects`,
the way larq's and Keras's `quantizers.get` resolve names; writing is
`keras.utils.serialize_keras_object`'s `{"class_name", "config"}`. What a
`Registry` adds: the recipe's flat form `{"name": ..., **config}`, one error
class per kind, and messages that list the names to choose from.

Example:
    SCHEDULES = Registry("pruning schedule", {"polynomial": PolynomialDecay, ...},
                         base=Schedule, error=ValueError,
                         choices="choose one of 'constant', 'polynomial'",
                         accepts="a name, a config dict, a schedule object or None")
    SCHEDULES.get("polynomial")                       # PolynomialDecay()
    SCHEDULES.get({"class_name": "PolynomialDecay", "config": {"final_sparsity": 0.8}})
    SCHEDULES.serialize(schedule)                     # {"class_name": ..., "config": ...}
"""

# The key each class is looked up by in Keras's custom objects: "package>name", as
# `register_keras_serializable` spells it, so that a custom object scope of the
# caller's holding a plain "PolynomialDecay" cannot stand in for ours.
_PACKAGE = "tfcompress"


class Registry:
    """The names of one kind of serializable object, and how to read and write them.

    Args:
        what: the kind, in messages ("pruning schedule").
        table: {name: class}; aliases and class names alike. Each class has
            `get_config()` and a `from_config(config)` that raises `error`.
        base: the class every instance derives from (passed through by `get`).
        error: the exception class for an unknown name or an unreadable identifier.
        choices: the end of the unknown-name message ("choose 'logits' or 'feature'").
        accepts: what `get` takes, for the can't-interpret message.
        dict_name: the kind in the message for a dict without a name
            (default `what`).
    """

    def __init__(self, what, table, *, base, error, choices, accepts, dict_name=None):
        self.what = what
        self.table = dict(table)
        self.base = base
        self.error = error
        self.choices = choices
        self.accepts = accepts
        self.dict_name = dict_name or what

    def lookup(self, name):
        """The class called `name` (an alias or a class name)."""
        if not isinstance(name, str) or name not in self.table:
            raise self.error(f"unknown {self.what} {name!r}; {self.choices} "
                             "(or their class names)")
        return self.table[name]

    def serialize(self, obj):
        """`{"class_name": ..., "config": ...}`, the Keras form `get` reads back."""
        from tfcompress.keras import keras
        config = keras.utils.serialize_keras_object(obj)
        return {"class_name": config["class_name"], "config": config["config"]}

    def deserialize(self, cls, config):
        """An instance of `cls` from its `get_config()` dict, through Keras's deserializer."""
        if not isinstance(config, dict):
            raise self.error(f"bad {cls.__name__} config {config!r}: it must be a dict")
        from tfcompress.keras import keras
        key = f"{_PACKAGE}>{cls.__name__}"
        return keras.utils.deserialize_keras_object(
            {"class_name": cls.__name__, "config": config, "module": None,
             "registered_name": key},
            custom_objects={key: cls, cls.__name__: cls})

    def get(self, identifier):
        """An object for a name, a dict (Keras or flat recipe form), an object or None.

        Raises:
            `error`: anything else, an unknown name or a bad config.
        """
        if identifier is None or isinstance(identifier, self.base):
            return identifier
        if isinstance(identifier, str):
            return self.deserialize(self.lookup(identifier), {})
        if isinstance(identifier, dict):
            if "class_name" in identifier:
                return self.deserialize(self.lookup(identifier["class_name"]),
                                        identifier.get("config", {}))
            if "name" in identifier:
                config = {k: v for k, v in identifier.items() if k != "name"}
                return self.deserialize(self.lookup(identifier["name"]), config)
            raise self.error(f"a {self.dict_name} dict needs a 'class_name' (with 'config') or "
                             f"a 'name' key, got keys {sorted(identifier)}")
        raise self.error(f"cannot interpret {identifier!r} as a {self.what}; pass "
                         f"{self.accepts}")
