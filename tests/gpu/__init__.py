"""CUDA fast paths checked against the CPU reference; skipped where no CUDA device is present."""
