"""Messages between processes of one machine, in memory-backed files: the process backend's
channel for the round's model and for each update.

A shared file holds one message written by one of ours and read by another (a pool's worker
and the parent), so it is not the wire format, which is made for peers: each array is copied
once, straight from the array into the file, and no checksum is computed on either side.
Layout: a prefix (magic, header length, file length), a msgpack header (the message without
its arrays, in the wire format, and the array table ``[name, dtype, shape, offset, nbytes]``),
padding to a multiple of 8, then each array's bytes at a multiple of 8. The magic is cleared
first and written last, so a file whose writer died mid-write never reads as a message.

A reader maps the file and gets arrays that are read-only views of its pages, all of them
views of one root array per message: when the receiver has let go of every array of an update
(the aggregator folded it in), the root is collected, which is how :class:`UpdateSlots` knows
the file may take the next update. Reusing files is what makes an update cheap: writing into
pages the file already has is a copy, while a fresh file costs the kernel allocating and zeroing
every page and the reader a page fault per 4 KiB; a slot stays mapped in the parent, so
reading a reused slot costs nothing at all.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import struct
import tempfile
import threading
import weakref
from typing import Any

import msgpack
import numpy as np

from foedus.codec import decode, encode
from foedus.core.errors import CodecError
from foedus.core.message import Message

MAGIC = b"FOEDSIM1"
PREFIX = struct.Struct("<8sQQ")
ALIGN = 8
#: pre-fault a mapping's pages in one call instead of one fault per page (Linux)
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)


def _pad(length: int) -> int:
    return -length % ALIGN


def _layout(msg: Message) -> tuple[bytes, list[tuple[int, memoryview]], int]:
    """The header, each array's bytes with the offset they go at, and the file's size."""
    table: list[list[Any]] = []
    arrays: list[tuple[int, memoryview]] = []
    offset = 0  # from the start of the body
    for name, value in msg.params.items():
        array = np.asarray(value)
        if array.dtype.hasobject or not array.dtype.isnative:
            raise CodecError(f"parameter {name!r} has unsupported dtype {array.dtype}")
        if not array.flags.c_contiguous:  # (ascontiguousarray would turn 0-d into 1-d)
            array = array.copy(order="C")
        table.append([name, array.dtype.str, list(array.shape), offset, array.nbytes])
        arrays.append((offset, array.reshape(-1).view(np.uint8).data))
        offset += array.nbytes + _pad(array.nbytes)
    header = msgpack.packb([encode(msg.replace(params={})), table], use_bin_type=True)
    body_start = PREFIX.size + len(header) + _pad(len(header))
    placed = [(body_start + at, data) for at, data in arrays]
    return header, placed, body_start + offset


def _pwrite_all(fd: int, data: memoryview | bytes, offset: int) -> None:
    view = memoryview(data)
    while view.nbytes:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


def _write(fd: int, msg: Message) -> int:
    """Write ``msg`` over whatever the open file held; its size. The file is cut or grown to
    the message's size, which a file that held a message of the same size skips."""
    header, arrays, size = _layout(msg)
    if os.fstat(fd).st_size != size:
        os.ftruncate(fd, size)
    _pwrite_all(fd, PREFIX.pack(bytes(len(MAGIC)), len(header), size) + header, 0)
    for offset, data in arrays:
        _pwrite_all(fd, data, offset)
    os.pwrite(fd, MAGIC, 0)  # last: the file is complete
    return size


def write_new(msg: Message, directory: str, prefix: str) -> tuple[str, int]:
    """Write ``msg`` to a new file in ``directory``; its path and size."""
    fd, path = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        return path, _write(fd, msg)
    except BaseException:
        os.unlink(path)
        raise
    finally:
        os.close(fd)


def write_to(msg: Message, path: str) -> int:
    """Write ``msg`` to the file at ``path``, made if missing, reused if not; its size."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        return _write(fd, msg)
    finally:
        os.close(fd)


def _map(path: str, populate: bool = False) -> mmap.mmap | bytes:
    """The file's bytes, mapped read-only: the pages the writer wrote, not a copy."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:  # mmap refuses empty files
            return b""
        return mmap.mmap(f.fileno(), 0, flags=mmap.MAP_SHARED | (_POPULATE if populate else 0),
                         prot=mmap.PROT_READ)


def parse(buffer: mmap.mmap | bytes, origin: str) -> tuple[Message, np.ndarray]:
    """The message in ``buffer`` and the root array every one of its arrays is a view of. A
    buffer that is not a finished shared message raises :class:`CodecError`."""
    size = len(buffer)
    if size < PREFIX.size:
        raise CodecError(f"{origin}: {size} bytes, not a finished shared message")
    magic, header_len, total = PREFIX.unpack_from(buffer, 0)
    if magic != MAGIC or total != size:
        raise CodecError(f"{origin}: not a finished shared message (its writer stopped "
                         f"mid-write?): {size} bytes, {total} announced")
    try:
        wire, table = msgpack.unpackb(buffer[PREFIX.size : PREFIX.size + header_len], raw=False)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise CodecError(f"{origin}: malformed header: {exc}") from exc
    msg = decode(wire)
    root = np.frombuffer(buffer, dtype=np.uint8)
    body_start = PREFIX.size + header_len + _pad(header_len)
    params: dict[str, np.ndarray] = {}
    for name, dtype_str, shape, offset, length in table:
        dtype = np.dtype(dtype_str)
        start = body_start + offset
        if math.prod(shape) * dtype.itemsize != length or start + length > size:
            raise CodecError(f"{origin}: array {name!r} does not fit its table entry")
        params[name] = root[start : start + length].view(dtype).reshape(shape)
    return msg.replace(params=params), root


def read(path: str) -> tuple[Message, int]:
    """The message in the file at ``path``, its arrays views of the mapped pages (which live as
    long as the arrays do); and the file's size."""
    buffer = _map(path)
    return parse(buffer, path)[0], len(buffer)


class UpdateSlots:
    """The files a pool's workers write updates into, each reused once its last update is let go.

    The parent hands each task a slot (:meth:`take`), reads the update the worker wrote into
    it (:meth:`receive`) and gets the slot back when the update's arrays are all gone
    (collected: the aggregator folded it in and dropped it), or at once with :meth:`give_back`
    when no update was written. A slot is therefore never written while anything can still read
    it. Each slot stays mapped here, so a reused slot is read without a single page fault. At
    most ``keep`` free slots are kept (a robust rule that holds every update of a round would
    otherwise leave that many model-sized files behind); a slot beyond them is removed.
    """

    def __init__(self, directory: str, keep: int) -> None:
        self.directory = directory
        self.keep = keep
        self._free: list[str] = []
        self._maps: dict[str, mmap.mmap | bytes] = {}
        self._made = 0
        self._lock = threading.Lock()
        self._closed = False

    def take(self) -> str:
        with self._lock:
            if self._free:
                return self._free.pop()
            self._made += 1
            return os.path.join(self.directory, f"update-{self._made}")

    def receive(self, path: str, size: int) -> Message:
        """The update a worker wrote to slot ``path`` (``size`` bytes, as the worker said)."""
        mapping = self._maps.get(path)
        if mapping is None or len(mapping) != size:
            # a remapped slot's old mapping ends with the last array on it (none: it was free)
            mapping = self._maps[path] = _map(path, populate=True)
        try:
            msg, root = parse(mapping, path)
        except CodecError:
            self.give_back(path)
            raise
        weakref.finalize(root, self.give_back, path).atexit = False
        return msg

    def give_back(self, path: str) -> None:
        """Slot ``path`` may take the next update (called when the last one is collected)."""
        with self._lock:
            if self._closed or path in self._free:
                return
            if len(self._free) < self.keep:
                self._free.append(path)
                return
            self._maps.pop(path, None)  # unmapped when the last array on it goes
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    @property
    def made(self) -> int:
        """How many slot files were made."""
        return self._made

    def close(self) -> None:
        """Forget every slot (the caller removes the directory; arrays still held keep their
        pages until they go)."""
        with self._lock:
            self._closed = True
            self._free.clear()
            self._maps.clear()
