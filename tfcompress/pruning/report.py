"""What pruning left: per-layer sparsity, and whether an M:N or block structure holds.

Example:
    report = sparsity_report(strip_pruning(pruned), structure="2:4")
    print(format_sparsity_report(report))
    satisfies_m_by_n(kernel, (2, 4))     # True when every 4 weights hold 2 zeros
"""

import numpy as np

from tfcompress._compat import pruning_wrapper
from tfcompress.keras import ensure_tf_keras_model
from tfcompress.layer_selection import walk
from tfcompress.pruning.wrapper import parse_structure, prunable_weights

__all__ = ["satisfies_m_by_n", "satisfies_blocks", "sparsity_report", "format_sparsity_report"]


def satisfies_m_by_n(kernel, m_by_n=(2, 4)):
    """True when every N consecutive weights along the input axis hold at least M zeros.

    The input axis is TFMOT's (pruning_utils.weights_rearrange): Conv2D
    kernels [kh, kw, in, out] and Dense kernels [in, out] are grouped along
    `in`, which is the innermost axis of TFLite's OHWI / [out, in] layouts. A
    last, shorter group counts its missing places as zeros, as TFMOT does.

    Returns:
        True/False, or None for a kernel that is not 2-D or 4-D.
    """
    kernel = np.asarray(kernel)
    if kernel.ndim not in (2, 4):
        return None
    m, n = m_by_n
    rows = np.moveaxis(kernel, -2, -1).reshape(-1, kernel.shape[-2])
    groups = np.pad(rows, ((0, 0), (0, -rows.shape[1] % n))).reshape(-1, n)
    return bool(np.all(np.count_nonzero(groups, axis=1) <= n - m))


def satisfies_blocks(kernel, block_size):
    """True when a 2-D kernel's zeros come in whole (height, width) blocks; None if not 2-D."""
    kernel = np.asarray(kernel)
    if kernel.ndim != 2:
        return None
    height, width = block_size
    nonzero = np.pad((kernel != 0).astype(float),
                     ((0, -kernel.shape[0] % height), (0, -kernel.shape[1] % width)),
                     constant_values=np.nan)  # edge blocks: padding is "don't care"
    blocks = nonzero.reshape(nonzero.shape[0] // height, height, -1, width)
    return bool(np.all(np.nanmin(blocks, axis=(1, 3)) == np.nanmax(blocks, axis=(1, 3))))


def _structure_ok(kernels, structure):
    _, m_by_n, block_size = parse_structure(structure)
    if m_by_n:
        results = [satisfies_m_by_n(k, m_by_n) for k in kernels]
    elif block_size:
        results = [satisfies_blocks(k, block_size) for k in kernels]
    else:
        return None
    return None if None in results else all(results)


def _row(layer, structure):
    """(name, type, effective kernels, structure) of a layer with prunable weights."""
    if isinstance(layer, pruning_wrapper.PruneLowMagnitude):
        kernels = [(weight * mask).numpy() for weight, mask, _ in layer.pruning_vars]
        if layer.sparsity_m_by_n:
            structure = "{}:{}".format(*layer.sparsity_m_by_n)
        elif tuple(layer.block_size) != (1, 1):
            structure = "{}x{}".format(*layer.block_size)
        return layer.layer, kernels, structure
    return layer, [weight.numpy() for weight in prunable_weights(layer) or []], structure


def sparsity_report(model, structure=None):
    """Measures the sparsity of every layer with prunable weights.

    Works on a pruned (wrapped) model, where it reads weight * mask (what the
    next forward pass computes with), and on a stripped or plain one.

    Example:
        report = sparsity_report(strip_pruning(pruned), structure="2:4")
        report["layers"][0]   # {"layer": "conv2", "type": "Conv2D", "weights": 288,
                              #  "nonzeros": 144, "sparsity": 0.5, "structure": "2:4",
                              #  "structure_ok": True, "wrapped": False}
        json.dumps(report)

    Args:
        model: a tf_keras model.
        structure: "M:N" or a block ("HxW" / (h, w)) to check unwrapped layers
            against; wrapped layers are checked against their own structure.

    Returns:
        {"layers": [one dict a layer], "total": {"weights", "nonzeros",
        "sparsity"}}: plain JSON types. "structure_ok" is None where no
        structure applies.
    """
    model = ensure_tf_keras_model(model)
    label = parse_structure(structure)[0]
    rows = []
    for layer in walk(model):
        inner, kernels, layer_structure = _row(layer, label)
        if not kernels:
            continue
        weights = int(sum(k.size for k in kernels))
        nonzeros = int(sum(np.count_nonzero(k) for k in kernels))
        rows.append({
            "layer": inner.name,
            "type": type(inner).__name__,
            "weights": weights,
            "nonzeros": nonzeros,
            "sparsity": 1.0 - nonzeros / weights if weights else 0.0,
            "structure": layer_structure,
            "structure_ok": _structure_ok(kernels, layer_structure) if layer_structure else None,
            "wrapped": inner is not layer,
        })
    weights = sum(row["weights"] for row in rows)
    nonzeros = sum(row["nonzeros"] for row in rows)
    total = {"weights": weights, "nonzeros": nonzeros,
             "sparsity": 1.0 - nonzeros / weights if weights else 0.0}
    return {"layers": rows, "total": total}


def format_sparsity_report(report):
    """The report as a text table, one row a layer plus a total.

    Example:
        print(format_sparsity_report(sparsity_report(model)))
    """
    header = ("layer", "type", "weights", "non-zeros", "sparsity", "structure")
    lines = [header]
    for row in report["layers"]:
        ok = {True: "ok", False: "NOT MET", None: ""}[row["structure_ok"]]
        structure = f"{row['structure']} {ok}".strip() if row["structure"] else "-"
        name = row["layer"] + (" *" if row["wrapped"] else "")
        lines.append((name, row["type"], f"{row['weights']:,}", f"{row['nonzeros']:,}",
                      f"{100 * row['sparsity']:.1f}%", structure))
    total = report["total"]
    lines.append(("total", "", f"{total['weights']:,}", f"{total['nonzeros']:,}",
                  f"{100 * total['sparsity']:.1f}%", ""))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    right = (False, False, True, True, True, False)

    def fmt(line):
        return "  ".join(cell.rjust(w) if r else cell.ljust(w)
                         for cell, w, r in zip(line, widths, right)).rstrip()

    text = [fmt(line) for line in lines]
    text.insert(1, "-" * len(text[0]))
    text.insert(len(text) - 1, "-" * len(text[0]))
    if any(row["wrapped"] for row in report["layers"]):
        text.append("* still wrapped for pruning (weights shown with their masks applied)")
    return "\n".join(text)
