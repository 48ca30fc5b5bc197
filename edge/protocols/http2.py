"""HTTP/2 frames and HPACK header blocks, sans I/O, for what the kernel probes see of a connection.

The probes send either the connection's byte stream with DATA payloads left out (frame mode, bpf/h2.bpf.h: every
frame header, and the payload of every frame but DATA up to KEEP_MAX) or the first bytes of each message (message
mode: older kernels, and connections before the probes switched them). `FrameReader` reassembles frames across calls
from either; `HeaderDecoder` decodes header blocks with one direction's HPACK dynamic table (RFC 7541), reusing
python-hyper's `hpack` for integers, Huffman strings and the static table.

The dynamic table is modelled as "the newest entries, as far as they are known": after a gap (a connection first seen
mid-stream, a record lost, a header block cut short) every entry older than the ones inserted since is unknown, and a
field that refers to one decodes as unknown, never as a guess. This is exact whatever the table's size limit: the
entries inserted since the gap are the newest, and an encoder only refers to entries its table still holds.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from hpack.exceptions import HPACKDecodingError
from hpack.hpack import decode_integer
from hpack.huffman_table import HUFFMAN_COMPLETE, HUFFMAN_EMIT_SYMBOL, HUFFMAN_FAIL, HUFFMAN_TABLE
from hpack.table import HeaderTable

__all__ = ["PREFACE", "FRAME_HEADER", "KEEP_MAX", "DATA", "HEADERS", "PRIORITY", "RST_STREAM", "SETTINGS",
           "PUSH_PROMISE", "PING", "GOAWAY", "WINDOW_UPDATE", "CONTINUATION", "END_STREAM", "END_HEADERS", "PADDED",
           "PRIORITY_FLAG", "ERROR_CODES", "Frame", "FrameReader", "HeaderBlock", "HeaderDecoder", "kept", "frame_mode_bytes",
           "plausible_frames", "header_block_fragment"]

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
FRAME_HEADER = 9
KEEP_MAX = 16384  # bpf/io.h HELIX_H2_KEEP_MAX
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, ACK, END_HEADERS, PADDED, PRIORITY_FLAG = 0x1, 0x1, 0x4, 0x8, 0x20
ERROR_CODES = ("NO_ERROR", "PROTOCOL_ERROR", "INTERNAL_ERROR", "FLOW_CONTROL_ERROR", "SETTINGS_TIMEOUT",
               "STREAM_CLOSED", "FRAME_SIZE_ERROR", "REFUSED_STREAM", "CANCEL", "COMPRESSION_ERROR", "CONNECT_ERROR",
               "ENHANCE_YOUR_CALM", "INADEQUATE_SECURITY", "HTTP_1_1_REQUIRED")
SETTINGS_HEADER_TABLE_SIZE = 1
_DEFAULT_TABLE = 4096
# hpack's Huffman decoder steps a nibble at a time; these are its steps two nibbles (one input byte) at a time, learnt
# as bytes are seen: (state << 8 | byte) -> (next state, flags of the second nibble, bytes emitted). Bounded, because
# hostile input chooses which pairs are visited; past the bound a step is computed and not kept.
_HUFFMAN_STEPS: dict[int, tuple[int, int, bytes]] = {}
_HUFFMAN_STEPS_MAX = 4096


def _huffman_step(key: int) -> tuple[int, int, bytes]:
    state, byte, out = key >> 8, key & 0xFF, b""
    flags = 0
    for nibble in (byte >> 4, byte & 0x0F):
        state, flags, symbol = HUFFMAN_TABLE[state * 16 + nibble]
        if flags & HUFFMAN_FAIL:
            return 0, HUFFMAN_FAIL, b""
        if flags & HUFFMAN_EMIT_SYMBOL:
            out += bytes((symbol,))
    step = (state, flags, out)
    if len(_HUFFMAN_STEPS) < _HUFFMAN_STEPS_MAX:
        _HUFFMAN_STEPS[key] = step
    return step


def _huffman(raw: bytes) -> bytes:
    """A Huffman-coded string (RFC 7541 5.2), as hpack's decode_huffman decodes it, a byte per step."""
    steps = _HUFFMAN_STEPS
    state = flags = 0
    out = bytearray()
    for byte in raw:
        key = state << 8 | byte
        step = steps.get(key) or _huffman_step(key)
        state, flags, emitted = step
        if flags & HUFFMAN_FAIL:
            raise HPACKDecodingError("Invalid Huffman string")
        out += emitted
    if raw and not flags & HUFFMAN_COMPLETE:
        raise HPACKDecodingError("Incomplete Huffman string")
    return bytes(out)


_STATIC = tuple((name.decode(), value.decode()) for name, value in HeaderTable.STATIC_TABLE)
_MAX_PENDING = KEEP_MAX + FRAME_HEADER  # bytes of one incomplete frame a reader holds
_MAX_ENTRIES = 1024  # dynamic entries remembered (a 4 KiB table holds at most 128; a larger one is rare)
_MAX_TABLE = 1 << 16  # bytes: a larger announced table is remembered up to this much
_MAX_FIELDS = 256  # fields decoded from one block
_MAX_BLOCK = 1 << 16  # bytes of one header block assembled from HEADERS and CONTINUATION frames


def kept(ftype: int, length: int) -> bool:
    """Whether frame mode sends this frame's payload (bpf/h2.bpf.h applies the same rule)."""
    return 1 <= ftype <= 9 and length <= KEEP_MAX


def frame_mode_bytes(stream: bytes) -> tuple[bytes, int]:
    """What frame mode sends of whole frames of one direction (the preface left out): every frame header and the
    payloads `kept` allows; and how many frames there were. For tests and benches that stand in for the probes."""
    out = bytearray()
    at = len(PREFACE) if stream.startswith(PREFACE) else 0
    frames = 0
    while at + FRAME_HEADER <= len(stream):
        length = int.from_bytes(stream[at:at + 3], "big")
        out += stream[at:at + FRAME_HEADER]
        if kept(stream[at + 3], length):
            out += stream[at + FRAME_HEADER:at + FRAME_HEADER + length]
        at += FRAME_HEADER + length
        frames += 1
    return bytes(out), frames


@dataclass(slots=True)
class Frame:
    """One frame; `payload` None when it was not sent (a DATA payload in frame mode), cut short when `truncated`."""

    type: int
    flags: int
    stream_id: int
    length: int
    payload: bytes | None
    truncated: bool = False


def _plausible(ftype: int, flags: int, stream: int, length: int) -> bool:
    """What a frame header of a real connection looks like (used to recognise HTTP/2 without the preface)."""
    if ftype > 9 or length > 1 << 20:
        return False
    if ftype in (SETTINGS, PING, GOAWAY):
        return stream == 0 and (ftype != SETTINGS or length % 6 == 0) and (ftype != PING or length == 8)
    if ftype in (DATA, HEADERS, PRIORITY, RST_STREAM, CONTINUATION, PUSH_PROMISE):
        return stream != 0 and (ftype != RST_STREAM or length == 4) and (ftype != PRIORITY or length == 5)
    return ftype != WINDOW_UPDATE or length == 4


def plausible_frames(data: bytes, at: int = 0) -> int:
    """Whole frames at `data[at:]` that all look like HTTP/2 (0 if the first does not): at least one whole frame and
    nothing implausible before the data ends."""
    n = 0
    while len(data) - at >= FRAME_HEADER:
        length = int.from_bytes(data[at:at + 3], "big")
        ftype, flags = data[at + 3], data[at + 4]
        stream = int.from_bytes(data[at + 5:at + 9], "big")
        if stream >> 31 or not _plausible(ftype, flags, stream, length):
            return 0
        if at + FRAME_HEADER + length > len(data):
            break
        at += FRAME_HEADER + length
        n += 1
    return n


class FrameReader:
    """One direction's frames, reassembled across calls (frame mode) or read from one snapshot (message mode)."""

    __slots__ = ("_buf", "_elided", "lost", "frames")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._elided = 0  # bytes of an unsent payload still to come (frame mode never sends them: only counted)
        self.lost = 0  # times the stream had to be given up until a frame boundary
        self.frames = 0

    def reset(self) -> None:
        """Forget a partial frame (bytes were lost before what comes next)."""
        self._buf.clear()
        self._elided = 0

    def feed_kept(self, data: bytes) -> list[Frame]:
        """Frame mode: more of the direction's kept stream. Frames whose payload frame mode does not send come out with
        payload None as soon as their header is whole."""
        buf = self._buf
        buf += data
        out: list[Frame] = []
        pos = 0
        end = len(buf)
        while end - pos >= FRAME_HEADER:
            length = int.from_bytes(buf[pos:pos + 3], "big")
            ftype, flags = buf[pos + 3], buf[pos + 4]
            stream = int.from_bytes(buf[pos + 5:pos + 9], "big") & 0x7FFFFFFF
            if not kept(ftype, length):
                out.append(Frame(ftype, flags, stream, length, None))
                pos += FRAME_HEADER
                continue
            if end - pos - FRAME_HEADER < length:
                break
            out.append(Frame(ftype, flags, stream, length, bytes(buf[pos + FRAME_HEADER:pos + FRAME_HEADER + length])))
            pos += FRAME_HEADER + length
        del buf[:pos]
        if len(buf) > _MAX_PENDING:
            self.lost += 1
            buf.clear()
        self.frames += len(out)
        return out

    def read_snapshot(self, data: bytes, at: int = 0) -> list[Frame]:
        """Message mode: the frames of one snapshot, read in full, the last one possibly cut short (`truncated`)."""
        out: list[Frame] = []
        end = len(data)
        while end - at >= FRAME_HEADER:
            length = int.from_bytes(data[at:at + 3], "big")
            ftype, flags = data[at + 3], data[at + 4]
            stream = int.from_bytes(data[at + 5:at + 9], "big") & 0x7FFFFFFF
            body = data[at + FRAME_HEADER:at + FRAME_HEADER + length]
            out.append(Frame(ftype, flags, stream, length, bytes(body), len(body) < length))
            at += FRAME_HEADER + length
        self.frames += len(out)
        return out


def header_block_fragment(f: Frame) -> tuple[bytes, bool]:
    """The header block fragment of a HEADERS or CONTINUATION frame (padding and priority removed), and whether it
    is whole."""
    p = f.payload or b""
    whole = not f.truncated and f.payload is not None
    if f.type != HEADERS:
        return p, whole
    start, pad = 0, 0
    if f.flags & PADDED:
        if not p:
            return b"", False
        pad, start = p[0], 1
    if f.flags & PRIORITY_FLAG:
        start += 5
    if f.truncated:
        return p[start:], False  # the padding, if any, is past the cut
    if start + pad > len(p):
        return b"", False
    return p[start:len(p) - pad], whole


@dataclass(slots=True)
class HeaderBlock:
    """A decoded header block: the fields known, how many could not be known, and whether the block was cut short."""

    fields: list[tuple[str, str]] = field(default_factory=list)
    unknown: int = 0  # fields referring to dynamic entries older than what is known, or past a cut
    truncated: bool = False

    @property
    def partial(self) -> bool:
        """Whether anything of the block is missing."""
        return bool(self.unknown or self.truncated)

    def get(self, name: str) -> str | None:
        """The first value of a field (names are lower case in HTTP/2)."""
        for k, v in self.fields:
            if k == name:
                return v
        return None


class _Cut(Exception):
    """The block ends in the middle of a field."""


class HeaderDecoder:
    """HPACK decoding of one direction's header blocks, with that direction's dynamic table (see the module doc)."""

    __slots__ = ("_entries", "_size", "max_size", "complete", "resets")

    def __init__(self, complete: bool = False) -> None:
        self._entries: deque[tuple[str, str] | None] = deque()  # newest first; None: inserted, but not known
        self._size = 0
        self.max_size = _DEFAULT_TABLE
        self.complete = complete  # the whole table is known (the connection's start was seen, nothing lost since)
        self.resets = 0

    def forget(self) -> None:
        """Bytes of this direction were lost: entries inserted by what was lost are unknown, and so, from now on, is
        the position of every entry known so far."""
        if self._entries or self.complete:
            self.resets += 1
        self._entries.clear()
        self._size = 0
        self.complete = False

    @property
    def known_entries(self) -> int:
        """Dynamic entries currently known."""
        return sum(1 for e in self._entries if e is not None)

    def decode(self, block: bytes, truncated: bool = False) -> HeaderBlock:
        """Decode a header block (`truncated`: only its first bytes are here)."""
        out = HeaderBlock(truncated=truncated)
        data = bytes(block)  # bytes, not a memoryview: compiled, indexing it is a C array read
        pos = 0
        try:
            while pos < len(data) and len(out.fields) + out.unknown < _MAX_FIELDS:
                pos = self._field(data, pos, out)
        except _Cut:
            out.truncated = True
        except HPACKDecodingError:
            out.truncated = True  # garbage: what follows cannot be trusted
        if out.truncated:
            self.forget()  # insertions past the cut are unknown
        return out

    def _field(self, data: bytes, pos: int, out: HeaderBlock) -> int:
        b = data[pos]
        if b & 0x80:  # indexed field
            index, n = self._int(data, pos, 7)
            entry = self._lookup(index)
            if entry is None:
                out.unknown += 1
            else:
                out.fields.append(entry)
            return pos + n
        if b & 0x40:  # literal, incremental indexing
            pos, entry = self._literal(data, pos, 6, out)
            self._insert(entry)
            return pos
        if b & 0x20:  # dynamic table size update
            size, n = self._int(data, pos, 5)
            self.max_size = min(size, _MAX_TABLE)
            self._evict()
            return pos + n
        pos, _entry = self._literal(data, pos, 4, out)  # without indexing / never indexed
        return pos

    def _literal(self, data: bytes, pos: int, prefix: int, out: HeaderBlock) -> tuple[int, tuple[str, str] | None]:
        index, n = self._int(data, pos, prefix)
        pos += n
        name: str | None
        if index:
            entry = self._lookup(index)
            name = entry[0] if entry is not None else None
        else:
            name, pos = self._string(data, pos)
        value, pos = self._string(data, pos)
        if name is None:
            out.unknown += 1
            return pos, None
        out.fields.append((name, value))
        return pos, (name, value)

    @staticmethod
    def _int(data: bytes, pos: int, prefix: int) -> tuple[int, int]:
        if pos >= len(data):
            raise _Cut
        mask = (1 << prefix) - 1
        small = data[pos] & mask
        if small < mask:  # fits its prefix, as most indexes and lengths do: no call into hpack
            return small, 1
        try:
            return decode_integer(data[pos:], prefix)
        except HPACKDecodingError:
            raise _Cut from None

    def _string(self, data: bytes, pos: int) -> tuple[str, int]:
        if pos >= len(data):
            raise _Cut
        huffman = data[pos] & 0x80
        length, n = self._int(data, pos, 7)
        pos += n
        raw = data[pos:pos + length]
        if len(raw) < length:
            raise _Cut
        text = _huffman(raw) if huffman else raw
        return text.decode("utf-8", "replace"), pos + length

    def _lookup(self, index: int) -> tuple[str, str] | None:
        if 1 <= index <= len(_STATIC):
            return _STATIC[index - 1]
        i = index - len(_STATIC) - 1
        if 0 <= i < len(self._entries):
            return self._entries[i]
        if self.complete:
            self.forget()  # a reference past a table we thought we knew whole: we did not
        return None

    def _insert(self, entry: tuple[str, str] | None) -> None:
        self._entries.appendleft(entry)
        if entry is None:
            # its size is unknown, so from now on is what the size limit evicts: known entries stay known (an
            # encoder only refers to what its table holds), but the table is no longer known whole
            self.complete = False
        else:
            self._size += len(entry[0].encode()) + len(entry[1].encode()) + 32
        self._evict()

    def _evict(self) -> None:
        # Exact while the table is known whole. Otherwise the size of the unknown entries is not counted, so entries
        # stay longer than in the encoder's table: harmless, it never refers to what it evicted.
        entries = self._entries
        while entries and (self._size > self.max_size or len(entries) > _MAX_ENTRIES):
            old = entries.pop()
            if old is not None:
                self._size -= len(old[0].encode()) + len(old[1].encode()) + 32
