"""Runners: get an artifact onto a target and measure it (latency, memory, energy).

Lean on import: paramiko and onnxruntime are imported by the runners that need them.
"""

from runners.base import EnergyReading, LatencyStats, Measurement, Runner, RunRequest

__all__ = ["EnergyReading", "LatencyStats", "Measurement", "RunRequest", "Runner"]
