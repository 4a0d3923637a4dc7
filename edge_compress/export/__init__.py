"""Exporters: a plan -> runnable files, checked in their real runtimes.

- :mod:`edge_compress.export.onnx`: QDQ ONNX through onnxruntime's static quantizer, driven by the
  simulation's exact scales (per-tensor overrides), int8 / int4 weights per layer.
- :mod:`edge_compress.export.tflite`: static int8 (mixed int4) TFLite through ai-edge-quantizer,
  float-I/O (``int8``) and full-integer (``int8-full``) variants, recipes generated from the plan.
- :mod:`edge_compress.export.parity`: run a file in onnxruntime / LiteRT (/ tflite_runtime) and
  compare it with the simulation (top-1 agreement, SQNR, runtime accuracy).
- :mod:`edge_compress.export.onnx_input`, :mod:`edge_compress.export.tflite_input`,
  :mod:`edge_compress.export.file_input`: existing .onnx / float .tflite models as input
  (measured noise-injection sensitivity, ILP bit allocation, quantization).

Fallbacks (a layer the runtime cannot run at its planned precision) are never silent: each is a
:class:`~edge_compress.export.base.Fallback` copied into the plan and the manifest.
"""
