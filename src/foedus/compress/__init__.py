"""Compression codecs for updates: lossless (zstd, lzma), QSGD quantisation, top-k sparsification.

Importing this package registers the pipeline stages ``zstd``, ``lzma``, ``qsgd`` and ``topk``.
Optional libraries (``zstandard``) are imported only when a zstd stage is built.
"""

from foedus.compress import lossless as _lossless  # noqa: F401  (registers "zstd", "lzma")
from foedus.compress import qsgd as _qsgd  # noqa: F401  (registers "qsgd")
from foedus.compress import sparsify as _sparsify  # noqa: F401  (registers "topk")
