#!/usr/bin/env python3
"""Independent GPTQ reference (python3 + numpy, float64), for tests/test_gptq.cpp.

Written from the GPTQ paper (Frantar et al. 2023, Algorithm 1), NOT from mpq's code: the plain
column-by-column form (no lazy batches) with the full inverse Hessian updated by the OBS rule,
    H^-1 <- H^-1 - H^-1[:, j] H^-1[j, :] / H^-1[j, j]   after column j,
which is mathematically the same as the Cholesky form mpq uses. The grid is GPTQ's reference
quantizer (asymmetric min-max per group including 0, integer zero-point; the scale rounded to
fp16 as mpq stores it), with group parameters taken from the compensated weights when a group's
first column is reached.

Usage: gptq_reference.py W.f64 H.f64 R C BITS GROUP DAMP OUT.f64
  W: R x C float64 little-endian row-major; H: C x C; GROUP 0 = one group per row.
  OUT: the quantized weights Q, R x C float64.
"""
import sys

import numpy as np


def params(x, bits):
    """Per row of the group x: fp16 scale and integer zero (computed in float32 as stored)."""
    maxq = np.float32(2 ** bits - 1)
    x = x.astype(np.float32)
    lo = np.minimum(x.min(axis=1), np.float32(0))
    hi = np.maximum(x.max(axis=1), np.float32(0))
    flat = ~(hi > lo)
    s = ((hi - lo) / maxq).astype(np.float16).astype(np.float32)
    s = np.where(s > 0, s, np.float32(np.float16(2 ** -24)))  # smallest fp16 subnormal
    z = np.clip(np.round(-lo / s), 0, maxq)
    s = np.where(flat, np.float32(1), s)
    z = np.where(flat, np.float32(0), z)
    return s.astype(np.float32), z.astype(np.float32)


def quant(w, s, z, bits):
    maxq = np.float32(2 ** bits - 1)
    q = np.clip(np.round(w.astype(np.float32) / s) + z, np.float32(0), maxq)
    return (s * (q - z)).astype(np.float64)


def main():
    wf, hf, R, C, bits, group, damp, out = sys.argv[1:9]
    R, C, bits, group, damp = int(R), int(C), int(bits), int(group), float(damp)
    W = np.fromfile(wf, dtype="<f8").reshape(R, C).copy()
    H = np.fromfile(hf, dtype="<f8").reshape(C, C).copy()
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    H += damp * np.mean(np.diag(H)) * np.eye(C)
    Hinv = np.linalg.inv(H)
    G = group if group > 0 else C
    Q = np.zeros_like(W)
    s = z = None
    for j in range(C):
        if j % G == 0:
            s, z = params(W[:, j:j + G], bits)
        q = quant(W[:, j], s, z, bits)
        Q[:, j] = q
        e = (W[:, j] - q) / Hinv[j, j]
        W[:, j + 1:] -= np.outer(e, Hinv[j, j + 1:])
        Hinv -= np.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    Q.astype("<f8").tofile(out)


if __name__ == "__main__":
    main()
