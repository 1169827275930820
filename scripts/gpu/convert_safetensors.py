#!/usr/bin/env python3
"""Converts the floating-point tensors of a safetensors file between f32 and f16.

Why: the tree carried to the lent GPU machine is limited to 64 MiB, and all-MiniLM-L6-v2 is 90 MB in f32 but
45 MB in f16. We ship the f16 copy and widen it back to f32 there (f16 -> f32 is exact, so both distill and the
PyTorch peer start from the same weights). Integer tensors (e.g. `position_ids`) and the header metadata are kept.

Usage: convert_safetensors.py --to f16|f32 IN.safetensors OUT.safetensors
Needs numpy and safetensors (both in the GPU machine's Python and in the project's .venv).
"""
import argparse
import os
import sys

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--to", choices=["f16", "f32"], required=True)
    ap.add_argument("src")
    ap.add_argument("dst")
    a = ap.parse_args()
    want = np.float16 if a.to == "f16" else np.float32
    tensors = {}
    with safe_open(a.src, framework="np") as f:
        meta = f.metadata() or {}
        for name in f.keys():
            t = f.get_tensor(name)
            if np.issubdtype(t.dtype, np.floating):
                t = t.astype(want)
            tensors[name] = np.ascontiguousarray(t)
    tmp = a.dst + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, a.dst)  # never leave a half-written weights file behind
    print(f"{a.src} -> {a.dst}: {len(tensors)} tensors as {a.to}, {os.path.getsize(a.dst) / 1e6:.1f} MB",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
