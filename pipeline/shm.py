"""Shared-memory payloads for `shm://` endpoints: a frame's pixels cross processes in one copy.

Over `ipc://` a 1080p frame goes through the kernel's socket buffers: a copy in, a copy out,
and a few dozen reads and writes of 200 kB with wake-ups of the other process between them.
Over `shm://PATH` the message itself still travels on the ZeroMQ socket `ipc://PATH`, but its
parts do not: the sender copies them into a slot of a ring in a shared-memory file and the
message says where; the receiver reads them there, in place. PROTOCOL.md ("Shared-memory
parts") is the specification; this module is its reference implementation.

A slot's 64-byte header holds eight little-endian u64 words:

- 0, the **stamp**, a seqlock: odd while the sender writes the slot; the message carries the
  even value the sender wrote when it finished.
- 1, **taken** (lossless edges): the receiver writes the stamp there once it holds the frame,
  and the sender does not reuse the slot before, so the ring is the edge's window.
- 2-7, six **leases**: the pid of a receiving process that holds views of the slot, 0 when
  free. A receiver takes one with a compare-and-swap before it hands the frame on and gives
  it back when the last view of the frame is gone (in Python: when the array that all part
  arrays view is collected). The sender never writes a leased slot: it marks the slot odd,
  then looks at the leases, and backs off if one is held; the receiver takes its lease,
  then looks at the stamp. Both steps are sequentially consistent atomics, so one of the two
  always sees the other. A receiver that finds no free lease copies the parts out instead
  and checks the stamp after its copy. Leases of processes that no longer run are cleared by
  the sender. When every slot is leased, the sender puts that frame in the message itself,
  as over ipc://; a receiver of shm:// accepts both.

The atomics are numba intrinsics (LLVM cmpxchg / atomicrmw / fence): numpy's loads and
stores give no ordering guarantee on weakly ordered CPUs such as the Jetson's ARM.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import stat
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from orstream.pipeline.leftovers import pid_alive, sweep_dead

SLOT_HEADER = 64  # bytes before a slot's first part
STAMP, TAKEN, LEASES = 0, 1, range(2, 8)  # the slot header's u64 words
ALIGN = 64  # parts start on cache lines
PAGE = mmap.PAGESIZE
DEFAULT_SLOTS = 8
FILE_PREFIX = "orstream-"
# orstream-<pid of the sender>-<16 hex digits>: the only names a receiver opens.
_NAME = re.compile(r"orstream-([0-9]{1,10})-[0-9a-f]{16}")
MAX_MAPPINGS = 64  # rings a receiver keeps mapped: one per sender (rooms into one inference
# process); rings whose file is gone are dropped first
WRITE_WAIT_S = 0.005  # a receiver that finds its slot being written waits this long at most


# ----------------------------------------------------------------- atomics (numba intrinsics)


def _item_pointer(context: Any, builder: Any, array_type: Any, array: Any, index: Any) -> Any:
    ary = context.make_array(array_type)(context, builder, array)
    return cgutils.get_item_pointer(context, builder, array_type, ary, [index])


@intrinsic
def _fence_ir(typingctx: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


@intrinsic
def _cas_ir(typingctx: Any, words: Any, index: Any, expected: Any, new: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array_type = signature.args[0]
        ptr = _item_pointer(context, builder, array_type, args[0], args[1])
        old = context.cast(builder, args[2], signature.args[2], array_type.dtype)
        val = context.cast(builder, args[3], signature.args[3], array_type.dtype)
        return builder.extract_value(builder.cmpxchg(ptr, old, val, "seq_cst", "seq_cst"), 1)
    return types.boolean(words, index, expected, new), codegen


@intrinsic
def _swap_ir(typingctx: Any, words: Any, index: Any, new: Any) -> Any:
    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        array_type = signature.args[0]
        ptr = _item_pointer(context, builder, array_type, args[0], args[1])
        val = context.cast(builder, args[2], signature.args[2], array_type.dtype)
        return builder.atomic_rmw("xchg", ptr, val, "seq_cst")
    return types.uint64(words, index, new), codegen


@njit(cache=True, nogil=True)
def fence() -> None:
    """A full memory barrier (x86: a locked instruction; ARM: dmb ish)."""
    _fence_ir()


@njit(cache=True, nogil=True)
def compare_and_swap(words: np.ndarray, index: int, expected: int, new: int) -> bool:
    """words[index] = new if it was `expected`, atomically; whether it was."""
    return _cas_ir(words, index, expected, new)


@njit(cache=True, nogil=True)
def swap(words: np.ndarray, index: int, new: int) -> int:
    """words[index] = new atomically (a full barrier); the value it had."""
    return _swap_ir(words, index, new)


def _warm_atomics() -> None:
    """Compile (or load from numba's cache) now, not on the first frame."""
    words = np.zeros(1, "<u8")
    fence()
    compare_and_swap(words, 0, 0, 1)
    swap(words, 0, 0)


# ----------------------------------------------------------------- files


def directory() -> Path:
    """Where shared-memory files live: /dev/shm (RAM) on Linux, the temp folder elsewhere."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK | os.X_OK) else \
        Path(tempfile.gettempdir())


def _align(n: int, to: int = ALIGN) -> int:
    return -(-n // to) * to


def sweep_stale(folder: Path | None = None) -> int:
    """Delete ring files left by senders that died without closing (SIGKILL): files of this
    user whose sender pid no longer runs. Returns how many went."""
    return sweep_dead(folder or directory(), f"{FILE_PREFIX}*", _NAME, Path.unlink)


# ----------------------------------------------------------------- sender


class SlotRing:
    """The sender's side: a file of `slots` slots, each big enough for one frame's parts.

    Made on the first frame and made again (a new file, the old one unlinked) when a frame
    needs more room than a slot has. The file is created 0600: only this user's processes
    can map it."""

    def __init__(self, slots: int = DEFAULT_SLOTS, lossless: bool = False,
                 folder: Path | None = None) -> None:
        if slots < 2:
            raise ValueError(f"a shared-memory ring needs at least 2 slots, not {slots}")
        self.slots = slots
        self.lossless = lossless
        self.folder = folder or directory()
        self.path: Path | None = None
        self.slot_bytes = 0
        self._map: mmap.mmap | None = None
        self._bytes: np.ndarray | None = None  # the file as uint8
        self._words: np.ndarray | None = None  # the file as little-endian uint64
        self._next = 0
        self.inline = 0  # frames sent in the message because every slot was leased
        self.reclaimed = 0  # slots taken back from receivers that went away
        self._refused = 0  # the slot size the shm folder had no room for (0: none refused)
        _warm_atomics()

    def _make(self, slot_bytes: int) -> None:
        self.close()
        sweep_stale(self.folder)
        path = self.folder / f"{FILE_PREFIX}{os.getpid()}-{secrets.token_hex(8)}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            os.ftruncate(fd, slot_bytes * self.slots)
            if hasattr(os, "posix_fallocate"):
                # Reserve the pages now: a sparse file that the tmpfs cannot back (Docker's
                # /dev/shm is 64 MB by default) would kill the sender with SIGBUS on the
                # first write past the limit; this raises ENOSPC instead.
                os.posix_fallocate(fd, 0, slot_bytes * self.slots)
            self._map = mmap.mmap(fd, slot_bytes * self.slots)
        except OSError:
            path.unlink(missing_ok=True)
            raise
        finally:
            os.close(fd)
        self._bytes = np.frombuffer(self._map, np.uint8)
        self._words = self._bytes.view("<u8")
        self.path, self.slot_bytes, self._next = path, slot_bytes, 0
        logger.debug("shared-memory ring {}: {} slots of {} bytes", path, self.slots,
                     slot_bytes)

    def _header(self, slot: int) -> int:
        return slot * self.slot_bytes // 8

    def _leased(self, slot: int) -> bool:
        """Whether a running receiver holds a lease on `slot`; leases of dead ones are
        cleared on the way."""
        words = self._words
        assert words is not None
        base = self._header(slot)
        held = False
        for i in LEASES:
            pid = int(words[base + i])
            if pid == 0:
                continue
            if pid_alive(pid):
                held = True
            elif compare_and_swap(words, base + i, pid, 0):
                self.reclaimed += 1
        return held

    def _handed_back(self, slot: int) -> bool:
        words = self._words
        assert words is not None
        base = self._header(slot)
        return not self.lossless or int(words[base + TAKEN]) == int(words[base + STAMP])

    def room(self, timeout_s: float, disconnected: Callable[[], bool] | None = None) -> bool:
        """Lossless: wait up to `timeout_s` until a slot has been handed back, or until no
        slot is waiting to be (then every one is leased and the frame goes inline). A
        receiver that went away never hands back its slots: `disconnected()`, True once a
        peer disconnected since the last call, makes the sender take them all back."""
        if not self.lossless or self._words is None:
            return True
        deadline = time.monotonic() + timeout_s
        while True:
            if any(self._handed_back(s) for s in range(self.slots)):
                return True
            if disconnected is not None and disconnected():
                self.reclaim()
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.0002)

    def reclaim(self) -> None:
        """Take back every slot not handed back (lossless, after a receiver disconnected)."""
        words = self._words
        if words is None:
            return
        for slot in range(self.slots):
            if not self._handed_back(slot):
                base = self._header(slot)
                swap(words, base + TAKEN, int(words[base + STAMP]))
                self.reclaimed += 1

    def _claim_slot(self) -> tuple[int, int] | None:
        """A slot free to write, marked odd (being written): (slot, its next stamp)."""
        words = self._words
        assert words is not None
        for i in range(self.slots):
            slot = (self._next + i) % self.slots
            if not self._handed_back(slot) or self._leased(slot):
                continue
            base = self._header(slot)
            previous = int(words[base + STAMP])
            stamp = (previous | 1) + 1  # the next even value, past a failed write
            swap(words, base + STAMP, stamp - 1)  # odd; the swap orders it before the check
            if self._leased(slot):  # a receiver leased it between the two looks: not this one
                swap(words, base + STAMP, previous)
                continue
            self._next = (slot + 1) % self.slots
            return slot, stamp
        return None

    def write(self, arrays: Sequence[np.ndarray]) -> tuple[dict[str, Any], list[int]] | None:
        """Copy `arrays` (C-contiguous) into a free slot. Returns the header's `shm` object
        and each part's offset in the file, or None if every slot is leased or waiting to
        be handed back (the frame then goes in the message)."""
        sizes = [a.nbytes for a in arrays]
        need = SLOT_HEADER + sum(_align(n) for n in sizes)
        if need > self.slot_bytes:
            if self._refused and need >= self._refused:
                self.inline += 1
                return None
            try:
                self._make(_align(need, PAGE))
            except OSError as exc:
                self._refused = need
                self.inline += 1
                logger.warning("shared memory: a ring of {} x {:.1f} MB does not fit in {} "
                               "({}); frames go in the messages, as over ipc://. Give it "
                               "room (docker run --shm-size=...) or use ipc://", self.slots,
                               _align(need, PAGE) / 1e6, self.folder, exc.strerror)
                return None
        claimed = self._claim_slot()
        if claimed is None:
            self.inline += 1
            return None
        slot, stamp = claimed
        data, words = self._bytes, self._words
        assert data is not None and words is not None
        base = slot * self.slot_bytes
        offsets = []
        at = base + SLOT_HEADER
        for array, size in zip(arrays, sizes, strict=True):
            np.copyto(data[at:at + size], array.reshape(-1).view(np.uint8))
            offsets.append(at)
            at += _align(size)
        swap(words, base // 8 + STAMP, stamp)  # even: done; the swap orders the pixels first
        return {"path": str(self.path), "slot_offset": base, "stamp": stamp}, offsets

    def close(self) -> None:
        """Unlink the file. Receivers that have it mapped keep reading what they hold;
        messages naming it that are still on their way are rejected as gone."""
        if self.path is not None:
            self.path.unlink(missing_ok=True)
            self.path = None
        self._bytes = self._words = None
        if self._map is not None:
            # A view may still be alive somewhere (BufferError): unmapped when collected.
            with contextlib.suppress(BufferError):
                self._map.close()
            self._map = None


# ----------------------------------------------------------------- receiver


class ShmError(ValueError):
    """A shared-memory reference that cannot be used. `reason` is a wire rejection key.

    Raised per message, never to the user: wire.decode turns it into a WireError that the
    receiver counts and drops, as it does every invalid message."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason


class _Mapping:
    """One ring file as a receiver maps it: the pixels read-only (a consumer must not write
    into the sender's slots), the slot headers read-write (leases, hand-back)."""

    def __init__(self, fd: int, size: int) -> None:
        self.data_map = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        self.word_map = mmap.mmap(fd, size // 8 * 8, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.data = np.frombuffer(self.data_map, np.uint8)
        self.words = np.frombuffer(self.word_map, "<u8")
        self.size = size


class Lease:
    """Where a decoded frame's parts still are: a slot of a mapping, and its stamp."""

    __slots__ = ("mapping", "slot_offset", "stamp", "span")

    def __init__(self, mapping: _Mapping, slot_offset: int, stamp: int, span: int) -> None:
        self.mapping, self.slot_offset, self.stamp, self.span = (
            mapping, slot_offset, stamp, span)


def _release(words: np.ndarray, index: int) -> None:
    swap(words, index, 0)


class SlotReader:
    """The receiver's side: maps the files that messages name, after checking that the name
    is one a sender of this user made in the shared-memory folder (a message must not make
    a receiver open any other file), and takes leases on the slots it hands on."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder or directory()
        self._maps: dict[str, _Mapping] = {}
        self.pid = os.getpid()
        self.copied = 0  # frames copied out because all of a slot's leases were taken
        _warm_atomics()

    @property
    def rings_mapped(self) -> int:
        """How many senders' rings this receiver holds mapped (closed senders' are let go)."""
        return len(self._maps)

    def _mapping(self, path: str) -> _Mapping:
        found = self._maps.get(path)
        if found is not None:
            return found
        where = Path(path)
        if where.parent != self.folder or _NAME.fullmatch(where.name) is None:
            raise ShmError("bad_shm", f"path {path!r} is not an orstream ring in {self.folder}")
        try:
            fd = os.open(where, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise ShmError("shm_gone", f"{where.name} no longer exists (its sender closed "
                           "or made a bigger ring)") from None
        except OSError as exc:
            raise ShmError("bad_shm", f"cannot open {where.name}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
                raise ShmError("bad_shm", f"{where.name} is not a file of this user")
            if info.st_size < SLOT_HEADER:
                raise ShmError("bad_shm", f"{where.name} holds {info.st_size} bytes")
            found = _Mapping(fd, info.st_size)
        finally:
            os.close(fd)
        # A ring whose file is gone belongs to a sender that closed or grew its ring: drop
        # it, or a long-running display would keep every restarted pipeline's ring in RAM.
        # Dropped, not closed: frames may still view it; it is unmapped when collected.
        for old in [p for p in self._maps if not os.path.exists(p)]:
            del self._maps[old]
        if len(self._maps) >= MAX_MAPPINGS:
            self._maps.pop(next(iter(self._maps)))
        self._maps[path] = found
        return found

    def locate(self, ref: Any, descs: Sequence[dict], sizes: Sequence[int]
               ) -> tuple[list[np.ndarray], Lease]:
        """Views of the parts that header `shm` object `ref` and part descriptors `descs`
        (their byte lengths `sizes`, from dtype x shape) place in a ring, and their lease.
        Only claim() makes them safe to keep."""
        if type(ref) is not dict:
            raise ShmError("bad_shm", "shm must be an object")
        path, slot_offset, stamp = ref.get("path"), ref.get("slot_offset"), ref.get("stamp")
        if type(path) is not str:
            raise ShmError("bad_shm", "shm.path must be a string")
        if type(slot_offset) is not int or slot_offset < 0 or slot_offset % ALIGN:
            raise ShmError("bad_shm", f"shm.slot_offset {slot_offset!r} is not a multiple "
                           f"of {ALIGN}")
        if type(stamp) is not int or stamp < 2 or stamp % 2 or stamp >= 2**64:
            raise ShmError("bad_shm", f"shm.stamp {stamp!r} is not an even integer >= 2")
        mapping = self._mapping(path)
        if slot_offset + SLOT_HEADER > mapping.size:
            raise ShmError("bad_shm", f"shm.slot_offset {slot_offset} is past the end of "
                           f"the file ({mapping.size} bytes)")
        views, end = [], slot_offset + SLOT_HEADER
        for desc, size in zip(descs, sizes, strict=True):
            offset = desc.get("offset")
            if type(offset) is not int or offset < slot_offset + SLOT_HEADER \
                    or offset + size > mapping.size:
                raise ShmError("bad_shm", f"part {desc.get('name')!r} offset {offset!r} is "
                               f"outside the slot or the file")
            views.append(mapping.data[offset:offset + size])
            end = max(end, offset + size)
        return views, Lease(mapping, slot_offset, stamp, end - slot_offset)

    def _settled_stamp(self, words: np.ndarray, index: int) -> int:
        """The slot's stamp once no write is in progress (a write takes a millisecond or
        two; a sender that backed off restores the old stamp at once)."""
        deadline = time.monotonic() + WRITE_WAIT_S
        stamp = int(words[index])
        while stamp % 2 and time.monotonic() < deadline:
            time.sleep(0)
            stamp = int(words[index])
        return stamp

    def claim(self, arrays: Sequence[np.ndarray], lease: Lease, hand_back: bool
              ) -> list[np.ndarray] | None:
        """`arrays` (views into the lease's slot) made safe to keep, or None if the sender
        had begun to overwrite the slot (the frame is lost). Leased, they stay views of the
        slot until the last of them is collected; without a free lease entry they are
        copied. `hand_back`: lossless, tell the sender this slot's frame has been taken."""
        mapping = lease.mapping
        words, base = mapping.words, lease.slot_offset // 8
        entry = next((base + i for i in LEASES
                      if compare_and_swap(words, base + i, 0, self.pid)), None)
        if entry is None:  # six holders already: copy, then check nothing changed meanwhile
            kept = [array.copy() for array in arrays]
            fence()
            if int(words[base + STAMP]) != lease.stamp:
                return None
            self.copied += 1
        else:
            if self._settled_stamp(words, base + STAMP) != lease.stamp:
                _release(words, entry)
                return None
            # One array over the slot that every part views: numpy views keep the array
            # they view alive, so when it is collected no part of this frame is in use.
            start = lease.slot_offset
            whole = np.frombuffer(mapping.data_map, np.uint8, lease.span, start)
            weakref.finalize(whole, _release, words, entry)
            kept = []
            for array in arrays:
                offset = array.__array_interface__["data"][0] - \
                    mapping.data.__array_interface__["data"][0] - start
                kept.append(whole[offset:offset + array.nbytes].view(array.dtype)
                            .reshape(array.shape))
        if hand_back:
            swap(words, base + TAKEN, lease.stamp)
        return kept
