"""edge_compress: fit a model to a device, then prove it on the device.

Importing this package is cheap: torch, onnxruntime, tensorflow and paramiko are imported only
inside the functions that need them (tests/test_lean_import.py guards this).
"""

from edge_compress.errors import UserError

__version__ = "0.1.0"

__all__ = ["UserError", "__version__"]
