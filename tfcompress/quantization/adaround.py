"""AdaRound: learn, per weight, whether to round up or down, layer by layer, on calibration data.

Nagel et al., "Up or Down? Adaptive Rounding for Post-Training Quantization", ICML 2020
(arXiv:2004.10568). For each Conv2D / Dense kernel W with per-output-channel scale s, a
soft rounding W~ = s * clip(floor(W/s) + h(V), qmin, qmax), h(V) = clip(sigmoid(V) *
(zeta - gamma) + gamma, 0, 1) with zeta = 1.1, gamma = -0.1, is trained with Adam to
minimise || x W - x W~ ||^2 on the layer's float inputs x, plus lam * sum(1 - |2h - 1|^beta),
which pushes every h to 0 or 1 as beta anneals from 20 to 2 after a 20% warm-up (the
paper's rectified sigmoid and regulariser; lam = 0.01, beta (20, 2) and the warm-up are
AIMET's AdaroundParameters defaults). Then the bias absorbs the mean output error
(bias correction, Nagel et al. 2019, "Data-Free Quantization").

The grid is the one AI Edge Quantizer stores (`tflite_export/int4.py`): symmetric,
scale = max|W| / qmax per output channel (integers -7..7 used for 4 bits).
Each channel's largest-magnitude weight stays at +-qmax * s, so when AEQ recomputes the
scale from the rounded kernel it finds the same one and stores exactly these integers.
A weight moves by less than one step: it goes to floor(W/s) or floor(W/s) + 1.

Example:
    rounded, plan = adaround(model, x_calibration[:256], bits=4)
    convert(rounded, "int4_weights")     # the file holds the learned integers
"""

import numpy as np

from tfcompress.keras import keras, tf

ZETA, GAMMA = 1.1, -0.1


def grid(kernel, bits):
    """(scale per output channel, qmin, qmax) of AEQ's symmetric per-channel grid, used
    as -qmax..qmax: a -8 (4 bits) would raise the channel's bound, and with it AEQ's
    recomputed scale, above max|W|."""
    qmax = 2 ** (bits - 1) - 1
    bound = np.max(np.abs(kernel.reshape(-1, kernel.shape[-1])), axis=0)
    return np.maximum(bound, 1e-9) / qmax, -qmax, qmax


def _h(v):
    return tf.clip_by_value(tf.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def _apply(layer, x, kernel):
    """The layer's linear part (no bias, no activation) with `kernel`."""
    if isinstance(layer, keras.layers.Dense):
        return tf.tensordot(x, kernel, axes=1)
    return tf.nn.convolution(x, kernel, strides=layer.strides, dilations=layer.dilation_rate,
                             padding=layer.padding.upper())


def round_layer(layer, x, bits=4, iterations=500, batch_size=32, learning_rate=1e-2,
                reg=0.01, beta=(20.0, 2.0), warm_start=0.2, seed=0):
    """Learned integers for `layer`'s kernel on inputs `x`; returns (q, scale, before, after)
    where before/after are the mean squared output errors of rounding to nearest and of q."""
    kernel = layer.kernel.numpy().astype(np.float32)
    scale, qmin, qmax = grid(kernel, bits)
    scaled = kernel / scale
    floor = np.floor(scaled)
    rest = np.clip(scaled - floor, 1e-4, 1 - 1e-4)
    # h(V) = rest at the start: the soft rounding starts at the float weights.
    v = tf.Variable(-np.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0).astype(np.float32))
    floor_t, scale_t = tf.constant(floor), tf.constant(scale.astype(np.float32))
    x = tf.constant(x.astype(np.float32))
    target = _apply(layer, x, kernel)
    optimizer = tf.keras.optimizers.Adam(learning_rate)  # tf_keras (tf.keras is tf_keras here)
    rng = np.random.default_rng(seed)

    @tf.function
    def step(xb, yb, b, weight):
        with tf.GradientTape() as tape:
            h = _h(v)
            soft = scale_t * tf.clip_by_value(floor_t + h, qmin, qmax)
            error = tf.reduce_mean(tf.square(_apply(layer, xb, soft) - yb))
            rounding = tf.reduce_sum(1.0 - tf.pow(tf.abs(2.0 * h - 1.0), b))
            loss = error + weight * rounding
        optimizer.apply_gradients([(tape.gradient(loss, v), v)])

    warm = int(warm_start * iterations)
    for i in range(iterations):
        idx = rng.choice(len(x), min(batch_size, len(x)), replace=False)
        progress = max(0.0, (i - warm) / max(1, iterations - warm))
        b = beta[1] + 0.5 * (beta[0] - beta[1]) * (1 + np.cos(progress * np.pi))
        step(tf.gather(x, idx), tf.gather(target, idx), tf.constant(b, tf.float32),
             tf.constant(0.0 if i < warm else reg, tf.float32))
    q = floor + (_h(v).numpy() >= 0.5)
    q = _keep_channel_bounds(np.clip(q, qmin, qmax), scaled, qmax)
    nearest = _keep_channel_bounds(np.clip(np.rint(scaled), qmin, qmax), scaled, qmax)
    before = float(tf.reduce_mean(tf.square(_apply(layer, x, nearest * scale) - target)))
    after = float(tf.reduce_mean(tf.square(_apply(layer, x, q * scale) - target)))
    return q, scale, before, after


def _keep_channel_bounds(q, scaled, qmax):
    """Each channel's largest-magnitude weight stays at +-qmax, so the exporter finds the
    same scale (it is exactly there: |W|max / scale = qmax)."""
    flat_q = q.reshape(-1, q.shape[-1])
    flat = scaled.reshape(-1, scaled.shape[-1])
    top = np.argmax(np.abs(flat), axis=0)
    channels = np.arange(flat.shape[1])
    flat_q[top, channels] = np.sign(flat[top, channels]) * qmax
    return flat_q.reshape(q.shape)


def adaround(model, x, bits=4, iterations=500, log=None):
    """A copy of `model` whose Conv2D / Dense kernels are on the `bits`-bit grid, with the
    rounding learned per layer on the float inputs that `x` gives it, and bias correction.

    Returns:
        (the rounded model, plan): plan has one row per layer: name, bits, the mean
        squared output error of round-to-nearest and of the learned rounding, seconds.
    """
    import time
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    layers = [layer for layer in copy.layers
              if (isinstance(layer, keras.layers.Dense) or type(layer) is keras.layers.Conv2D)
              and getattr(layer, "groups", 1) == 1]
    probe = keras.Model(copy.inputs, [layer.input for layer in layers])
    inputs = probe.predict(x, verbose=0, batch_size=64)
    inputs = inputs if isinstance(inputs, list) else [inputs]
    plan = []
    for layer, x_in in zip(layers, inputs):
        start = time.time()
        kernel = layer.kernel.numpy()
        q, scale, before, after = round_layer(layer, x_in, bits=bits, iterations=iterations)
        rounded = (q * scale).astype(np.float32)
        if layer.use_bias:  # bias correction: the mean output error goes into the bias
            shift = np.mean(_apply(layer, x_in, kernel).numpy() -
                            _apply(layer, x_in, rounded).numpy(),
                            axis=tuple(range(x_in.ndim - 1)))
            layer.bias.assign(layer.bias.numpy() + shift)
        layer.kernel.assign(rounded)
        plan.append({"layer": layer.name, "bits": bits, "mse_nearest": before,
                     "mse_learned": after, "seconds": round(time.time() - start, 2)})
        if log:
            log(f"    adaround {layer.name}: output MSE {before:.3g} (nearest) -> {after:.3g} "
                f"in {time.time() - start:.1f} s")
    return copy, plan
