"""Bit packing and Elias-gamma coding of small integers, vectorised with numpy.

Quantised updates are small integers (a 4-bit code per value); storing each in a byte would
waste half the budget. :func:`pack` stores ``n`` codes of ``bits`` bits in exactly
``ceil(n * bits / 8)`` bytes. :func:`gamma_encode` / :func:`gamma_decode` implement Elias-gamma
coding (the variable-length code QSGD's paper uses): an integer ``x >= 1`` takes ``2*floor(log2
x) + 1`` bits, so the frequent small levels cost one or three bits. Decoding a variable-length
code is sequential by nature; here it is done without a Python loop over values by pointer
doubling over "where does the next codeword start" (``O(L log L)`` numpy work for ``L`` bits).
"""

from __future__ import annotations

import numpy as np

from foedus.core.errors import CodecError


def packed_size(n: int, bits: int) -> int:
    """Bytes that :func:`pack` uses for ``n`` codes of ``bits`` bits."""
    return -(-n * bits // 8)


def pack(codes: np.ndarray, bits: int) -> np.ndarray:
    """Pack uint8 codes (each < 2**bits) into a uint8 array, most significant bit first."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be 1-8, got {bits}")
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    if bits == 8:
        return np.array(codes, dtype=np.uint8)
    if 8 % bits == 0:  # 1, 2 or 4 bits: whole codes per byte, by shifts
        per = 8 // bits
        padded = np.zeros(-(-len(codes) // per) * per, np.uint8)
        padded[: len(codes)] = codes
        shifts = (bits * np.arange(per - 1, -1, -1)).astype(np.uint8)
        packed: np.ndarray = np.bitwise_or.reduce(padded.reshape(-1, per) << shifts, axis=1)
        return packed.astype(np.uint8)
    # general case: keep the low `bits` columns of each code's bit row, pack the flat bit stream
    matrix = np.unpackbits(codes[:, None], axis=1)[:, 8 - bits :]
    return np.packbits(matrix.ravel())


def unpack(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of :func:`pack`; raises :class:`CodecError` if ``packed`` has the wrong size."""
    if not 1 <= bits <= 8:
        raise CodecError(f"bits must be 1-8, got {bits}")
    if packed.dtype != np.uint8 or packed.ndim != 1 or len(packed) != packed_size(n, bits):
        raise CodecError(
            f"packed codes hold {packed.size} bytes; {n} codes of {bits} bits need "
            f"{packed_size(n, bits)}"
        )
    if bits == 8:
        return packed.copy()
    if 8 % bits == 0:
        per = 8 // bits
        shifts = (bits * np.arange(per - 1, -1, -1)).astype(np.uint8)
        out = (packed[:, None] >> shifts) & np.uint8(2**bits - 1)
        return out.ravel()[:n].astype(np.uint8)
    stream = np.unpackbits(packed)[: n * bits].reshape(n, bits)
    matrix = np.zeros((n, 8), np.uint8)
    matrix[:, 8 - bits :] = stream
    return np.packbits(matrix, axis=1).ravel()


def gamma_encode(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Elias-gamma code positive integers; returns (packed bytes, number of bits used)."""
    x = np.asarray(values, dtype=np.uint64)
    if x.size and int(x.min()) < 1:
        raise ValueError("Elias-gamma codes positive integers only")
    if x.size == 0:
        return np.zeros(0, np.uint8), 0
    width = np.floor(np.log2(x.astype(np.float64))).astype(np.int64)  # N: leading zeros
    width = np.where(np.left_shift(np.uint64(1), (width + 1).astype(np.uint64)) <= x,
                     width + 1, width)  # guard float rounding near powers of two
    lengths = 2 * width + 1
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    total = int(lengths.sum())
    stream = np.zeros(total, np.uint8)
    # the binary part (N + 1 bits, MSB first) follows N zeros
    counts = width + 1
    group_start = np.repeat(np.cumsum(counts) - counts, counts)
    within = np.arange(int(counts.sum())) - group_start
    owner_width = np.repeat(width, counts)
    shift = (owner_width - within).astype(np.uint64)
    bits = (np.repeat(x, counts) >> shift) & np.uint64(1)
    stream[np.repeat(starts + width, counts) + within] = bits.astype(np.uint8)
    return np.packbits(stream), total


def gamma_decode(packed: np.ndarray, nbits: int, count: int) -> np.ndarray:
    """Decode exactly ``count`` Elias-gamma codewords from the first ``nbits`` bits.

    Raises :class:`CodecError` if the stream is short, malformed or has bits left over.
    """
    if packed.dtype != np.uint8 or packed.ndim != 1 or len(packed) != -(-nbits // 8):
        raise CodecError(f"gamma stream of {nbits} bits must be {-(-nbits // 8)} bytes")
    if count == 0:
        if nbits:
            raise CodecError("gamma stream has bits but no values")
        return np.zeros(0, np.uint64)
    if count > nbits:
        raise CodecError(f"{nbits} bits cannot hold {count} gamma codewords")
    stream = np.unpackbits(packed)[:nbits]
    size = nbits
    # next_one[p]: index of the first 1 at or after p (size if none)
    ones = np.where(stream == 1, np.arange(size), size)
    next_one = np.minimum.accumulate(ones[::-1])[::-1]
    pos = np.arange(size)
    # a codeword starting at p has N = next_one[p] - p zeros and ends at next_one[p] + N
    jump = np.minimum(2 * next_one - pos + 1, size + 1)
    jump = np.concatenate([jump, [size + 1, size + 1]])  # sentinels: past the end stays there
    # starts[m] = jump^m(0) for every m < count, by binary decomposition of m (pointer doubling)
    m = np.arange(count)
    starts = np.zeros(count, np.int64)
    power = jump
    for k in range(max(1, int(count - 1).bit_length())):
        sel = ((m >> k) & 1).astype(bool)
        starts[sel] = power[starts[sel]]
        power = power[power]
    if starts[-1] >= size or int(jump[starts[-1]]) != size:
        raise CodecError("gamma stream is truncated, malformed, or has trailing bits")
    width = next_one[starts] - starts
    if int((next_one[starts] + width).max()) >= size:
        raise CodecError("gamma stream is truncated")
    if int(width.max()) > 63:
        raise CodecError("gamma codeword too long")
    # value = the N + 1 bits from next_one[p], MSB first; fold them in with a vectorised sum
    counts = width + 1
    group_start = np.repeat(np.cumsum(counts) - counts, counts)
    within = np.arange(int(counts.sum())) - group_start
    bit_idx = np.repeat(next_one[starts], counts) + within
    shift = (np.repeat(width, counts) - within).astype(np.uint64)
    contrib = stream[bit_idx].astype(np.uint64) << shift
    return np.add.reduceat(contrib, np.cumsum(counts) - counts).astype(np.uint64)
