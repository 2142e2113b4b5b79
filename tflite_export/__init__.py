"""Everything that makes or reads a `.tflite` file: convert, inspect, evaluate, benchmark."""
