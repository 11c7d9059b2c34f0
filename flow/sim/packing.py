"""Pack integer tensors into AXI-stream beats the way FINN does, and back.

FINN packs the innermost (folded) dimension of a stream with element 0 in the least significant bits
(finn.util.data_packing.npy_to_rtlsim_input with reverse_inner=True). A beat is stored as little-endian uint32
words for the testbench.
"""

from __future__ import annotations

import numpy as np


def pack_beats(values: np.ndarray, bits: int, words: int) -> np.ndarray:
    """(beats, elems) integers of `bits` bits each -> (beats, words) uint32; negative values in two's complement."""
    values = np.asarray(values, dtype=np.int64)
    beats, elems = values.shape
    if elems * bits > words * 32:
        raise ValueError(f"{elems} elements of {bits} bits do not fit {words} words")
    masked = (values & ((1 << bits) - 1)).astype("<u8")
    bitplanes = np.unpackbits(masked.view(np.uint8).reshape(beats, elems, 8), axis=-1, bitorder="little")
    flat = bitplanes[:, :, :bits].reshape(beats, elems * bits)
    flat = np.pad(flat, ((0, 0), (0, words * 32 - elems * bits)))
    return np.packbits(flat, axis=-1, bitorder="little").view("<u4").reshape(beats, words)


def unpack_beats(beats: np.ndarray, elems: int, bits: int, signed: bool) -> np.ndarray:
    """(beats, words) uint32 -> (beats, elems) int64, inverse of pack_beats."""
    beats = np.ascontiguousarray(beats, dtype="<u4")
    n = beats.shape[0]
    flat = np.unpackbits(beats.view(np.uint8).reshape(n, -1), axis=-1, bitorder="little")[:, : elems * bits]
    planes = flat.reshape(n, elems, bits).astype(np.int64)
    vals = (planes << np.arange(bits, dtype=np.int64)).sum(axis=-1)
    if signed:
        vals = np.where(vals >= 1 << (bits - 1), vals - (1 << bits), vals)
    return vals
