"""How every tfcompress fine-tune is compiled: Adam on a cosine-decayed learning rate.

Example:
    model.compile(optimizer=cosine_adam(2e-3, total_steps=3 * 469), loss=...)
    compile_for_training(model, 2e-3, 3 * 469, heads.detect(model))
"""


def cosine_adam(learning_rate, total_steps=None):
    """Adam whose rate decays to 1% of `learning_rate` over `total_steps` (constant when None)."""
    from tfcompress.keras import keras  # here: importing tfcompress.stages stays TF-free
    # Cosine decay to 1% over the phase: a few CPU epochs get most of the accuracy.
    rate = learning_rate if total_steps is None else keras.optimizers.schedules.CosineDecay(
        learning_rate, max(1, total_steps), alpha=0.01)
    return keras.optimizers.Adam(rate)


def compile_for_training(model, learning_rate, total_steps, head):
    """Compiles `model` with `cosine_adam` and the loss and accuracy of `head` (a
    `heads.Head`: from_logits, binary cross-entropy...)."""
    model.compile(optimizer=cosine_adam(learning_rate, total_steps), loss=head.loss(),
                  metrics=[head.metric()])
