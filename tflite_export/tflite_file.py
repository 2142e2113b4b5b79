"""Reading a `.tflite` flatbuffer safely: one gate every reader goes through.

The flatbuffer is checked (size, "TFL3" identifier, and a full parse with the
schema that ships with ai-edge-litert) before anything hands it to the
interpreter, so a wrong path or a corrupt file becomes one clear error.

Example:
    data = read_tflite("model.tflite")          # bytes, validated
    model = parse_tflite(data)                  # schema ModelT object
"""

import os

from ai_edge_litert import schema_py_generated as schema

from tfcompress.errors import TfcompressError


class TfliteFileError(TfcompressError, ValueError):
    """Not a readable TFLite flatbuffer; the message names the file."""


def read_tflite(model):
    """Returns the validated bytes of `model` (a path, bytes or bytearray).

    Raises:
        TfliteFileError: missing/unreadable path, or not a valid flatbuffer.
    """
    if isinstance(model, (bytes, bytearray)):
        data, label = bytes(model), "<bytes>"
    else:
        label = os.fspath(model)
        if not os.path.exists(label):
            raise TfliteFileError(f"{label}: no such file")
        if os.path.isdir(label):
            raise TfliteFileError(f"{label}: is a directory, not a .tflite file")
        try:
            with open(label, "rb") as f:
                data = f.read()
        except OSError as e:
            raise TfliteFileError(f"{label}: cannot read: {e.strerror or e}") from e
    parse_tflite(data, label)
    return data


def parse_tflite(data, label="<bytes>"):
    """Parses flatbuffer bytes into the schema's object API (`ModelT`).

    Raises:
        TfliteFileError: when the bytes are not a complete TFLite model.
    """
    if len(data) < 16 or data[4:8] != b"TFL3":
        raise TfliteFileError(f"{label}: not a TFLite flatbuffer (no 'TFL3' identifier; "
                              f"{len(data)} bytes)")
    try:
        model = schema.ModelT.InitFromObj(schema.Model.GetRootAs(data, 0))
    except Exception as e:  # truncated/corrupt offsets surface as many error types
        raise TfliteFileError(f"{label}: corrupt or truncated TFLite flatbuffer "
                              f"({type(e).__name__}: {e})") from e
    if not model.subgraphs:
        raise TfliteFileError(f"{label}: TFLite flatbuffer has no subgraphs")
    return model
