"""Quantization-aware training (QAT) of tf_keras models on TFMOT's 8-bit schemes.

`quantize` wraps the model in TFMOT's fake-quantization wrappers; the model
trains as usual (compile + fit, no callbacks) and converts to an int8 TFLite
file with `tflite_export.convert(qat_model, "int8_full")`, which needs no
representative dataset: the ranges were learned in training. Post-training
quantization needs no Keras stage at all: it is `tflite_export.convert`.

Example:
    from tfcompress import quantization
    qat = quantization.quantize(model, quantization.QATConfig())
    qat.compile(keras.optimizers.Adam(1e-4), "sparse_categorical_crossentropy")
    qat.fit(x, y, epochs=1, batch_size=128)
    tflite_bytes = convert(qat, "int8_full")          # int8 in, int8 out, int8 ops

Schemes (`QATConfig.scheme`):
    default                   TFMOT's Default8BitQuantizeScheme: int8 weights (per output
                              channel for Conv2D/DepthwiseConv2D, per tensor for Dense),
                              int8 activations.
    prune_preserving          PQAT: each weight that is zero when QAT starts stays zero
                              (its mask is applied before the fake quantization), so a
                              pruned model keeps its sparsity in the int8 file. Give it the
                              stripped model (`pruning.strip_pruning`).
    cluster_preserving        CQAT: the weights of a clustered (stripped) model stay on
                              their clusters while the centroids train, so each kernel
                              keeps its number of unique values.
    prune_cluster_preserving  PCQAT: both, for a model pruned, then clustered with
                              `preserve_sparsity=True`.
`per_tensor=True` gives every kernel one scale (TFMOT's `disable_per_axis`;
for the preserving schemes the per-tensor quantizer TFMOT uses for Dense is
used for convolutions too).

Where we differ from TFMOT 0.8.1 (each measured here; see `schemes`, `repairs`):
    * A Conv2D/DepthwiseConv2D/Dense that feeds a ReLU layer keeps its weight
      quantization (`schemes.WeightsOnlyQuantizeConfig`): TFMOT dropped it, so such a layer
      trained with float weights, ignored per_tensor and lost PQAT zeros.
    * Each layer gets its own preserving quantizer, and a PQAT model saves
      and reloads as PQAT (`PreservingQuantizeConfig`).
    * CQAT keeps a per-tensor clustered Conv2D per tensor
      (`repairs.cluster_granularity_from_weights`): TFMOT switched such kernels to
      per-channel centroids, which drift apart (4 values became 32).
    * QAT files load, PQAT and (P)CQAT ones included (`load_qat_model`).
    * Conversion: `tflite_export.convert` gives the converter no
      representative dataset for a QAT model (it would recalibrate) and checks
      the int8_full result itself (see there).

BatchNorm: TFMOT does not fold BatchNorm during training. A BatchNormalization
right after a Conv2D/DepthwiseConv2D/Dense without activation is matched by
its layout transforms: no fake quantization between the two, the BN output
(or the ReLU after it) is quantized. The TFLite converter then folds the BN
into the layer's weights and bias (no MUL/ADD op is left). Measured here (TF
2.21, TFMOT 0.8.1): with per-channel Conv2D weights the folded conv is int8;
with `per_tensor=True`, or after a Dense, the fold multiplies each output
channel by its own BN scale, which one per-tensor scale cannot hold, and the
converter keeps that conv / FULLY_CONNECTED in float. `int8` mode then runs
it in float; `int8_full` refuses the model, naming the float tensors.
`quantize` warns about such pairs. A BatchNormalization anywhere else is a
layer TFMOT cannot quantize (see below).

Rescaling (the `Rescaling(1/255)` users put inside a model that takes uint8
pixels) has no QuantizeConfig in TFMOT 0.8.1; it is an affine map of its input
with no weights, so it gets TFMOT's own output-only 8-bit config (its output is
fake-quantized, as after any activation) unless you give it another: measured on
the acceptance suite's Rescaling model, QAT then converts to int8_full (full
integer) at 81.2% against 81.4% float.

Unsupported layers (TFMOT 0.8.1 has no QuantizeConfig for, e.g., Conv1D,
LayerNormalization, Lambda, TF op layers from expressions like
`x + 3.0`, nested models): `quantize` lists every one by name and type, with
the two ways out: keep them in float (`exclude_layers` / `exclude_types`), or
give them a `QuantizeConfig` (`quantize_configs=` or
`register_quantize_config`). A model with float layers converts in `int8`
mode; `int8_full` needs every op quantized.

Saving: `tfcompress.save_model`, then `load_qat_model`, for `.keras` and `.h5`
files of every scheme. TFMOT alone could not load a `.keras` QAT file, nor a
cluster-preserving one in any format, and reloaded PQAT as plain QAT; see
`load_qat_model`.

Modules (one concept each; import from here, the package, not from them):
    config      QATConfig, SCHEMES, QuantizationError, register_quantize_config
    schemes     the schemes by name: registries, preserving configs, layout transforms
    selection   which layers are quantized; the errors that name the ones TFMOT cannot
    repairs     fixes of TFMOT's QAT applied when quantizing and loading
    qat         quantize, is_qat_model, load_qat_model
    kernels     quantized_kernels, tflite_kernels: kernels read back for reports

References:
    Jacob et al. 2018, "Quantization and Training of Neural Networks for
    Efficient Integer-Arithmetic-Only Inference", https://arxiv.org/abs/1712.05877
    TFMOT collaborative optimization (PQAT, CQAT, PCQAT):
    https://www.tensorflow.org/model_optimization/guide/combine/collaborative_optimization
"""

from tfcompress.quantization.config import (SCHEMES, QATConfig, QuantizationError,
                                            register_quantize_config,
                                            unregister_quantize_config)
from tfcompress.quantization.kernels import quantized_kernels, tflite_kernels
from tfcompress.quantization.qat import is_qat_model, load_qat_model, quantize
from tfcompress.quantization.schemes import PreservingQuantizeConfig, WeightsOnlyQuantizeConfig

__all__ = ["QuantizationError", "QATConfig", "SCHEMES", "quantize", "register_quantize_config",
           "unregister_quantize_config", "load_qat_model", "is_qat_model", "quantized_kernels",
           "tflite_kernels", "PreservingQuantizeConfig", "WeightsOnlyQuantizeConfig"]
