"""The tar format's fields, and a walk over a tar stream's members as its bytes pass.

One reading of ustar, GNU long-name and pax headers for every piece of drp that looks at a base backup's
tar: the untar that unpacks it (core/restore/untar.py), the backup's tap that reads backup_label and
backup_manifest out of it (core/backup/physical.py) and the frame cutter that gives large files frames of
their own (core/frames.py). They must agree on every member's name and size: a frame named after a file
is skipped only if the untar, reading the same headers, is then inside that file's body.
"""

from __future__ import annotations

BLOCK = 512
MAX_META = 1 << 20  # a pax or GNU long-name header's body: names, never data
FILE_TYPES = (b"0", b"\0", b"7")  # regular file (7: contiguous, written as regular)
DIR_TYPE = b"5"
PAX, PAX_GLOBAL, GNU_LONGNAME = b"x", b"g", b"L"
META_TYPES = (PAX, PAX_GLOBAL, GNU_LONGNAME)


class TarFormatError(ValueError):
    """The tar holds a member that is unsafe, of a refused kind, or malformed."""


def check_sum(header: bytes) -> None:
    stored = number(header[148:156])
    unsigned = sum(header[:148]) + 8 * 32 + sum(header[156:])
    signed = unsigned - 2 * sum(b for b in header[:148] + header[156:] if b > 127)
    if stored not in (unsigned, signed):
        raise TarFormatError("a tar header's checksum does not match: the tar is damaged")


def number(field: bytes) -> int:
    """A numeric header field: octal text, or GNU base-256 (first byte 0x80) for large values."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise TarFormatError(f"a tar header holds {field!r} where a number belongs: the tar is damaged") from None


def header_name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:263] == b"ustar\0":  # POSIX ustar: a prefix field extends the name (GNU uses it otherwise)
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def long_name(body: bytes) -> str:
    """A GNU long-name header's body: the next member's name."""
    return body.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def pax_records(body: bytes) -> dict[str, str]:
    """The ``path`` and ``size`` records of a pax extended header (``LEN key=value\\n`` each); others ignored."""
    found, pos = {}, 0
    while pos < len(body):
        space = body.find(b" ", pos)
        try:
            length = int(body[pos:space])
        except ValueError:
            raise TarFormatError("a pax header is malformed: the tar is damaged") from None
        if length <= 0 or space < 0:
            raise TarFormatError("a pax header is malformed: the tar is damaged")
        key, _, value = body[space + 1:pos + length - 1].partition(b"=")
        if key in (b"path", b"size"):
            found[key.decode()] = value.decode("utf-8", "surrogateescape")
        pos += length
    if "size" in found and not found["size"].isdigit():
        raise TarFormatError("a pax header's size is not a number: the tar is damaged")
    return found


def relative(name: str) -> str:
    """A member's name as a plain relative path: ``./`` and empty components dropped (what the untar writes)."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


class TarWalk:
    """Follows a tar stream's members as its bytes pass: feed it the bytes in any pieces (``walk(data)``).

    Subclasses hear ``member(name, size, kind)`` when a member's header is read (``offset`` is then the
    stream position of its body), ``body(piece)`` for each piece of its content and ``member_end()`` after
    it. Pax and GNU long-name headers give the next member its name and size, as in the untar; header
    checksums are the untar's business. After the end-of-archive block, ``ended`` is True and the rest
    (the record's zero padding) is ignored.
    """

    def __init__(self) -> None:
        self.offset = 0  # stream position of the next byte
        self.ended = False
        self._header = bytearray()
        self._left = 0  # body bytes of the current member still to come
        self._pad = 0  # zero bytes after it, up to the next block
        self._meta: bytearray | None = None  # a pax or long-name body being collected
        self._meta_type = b""
        self._next: dict[str, str] = {}

    def walk(self, data: bytes | memoryview) -> None:
        view, i, n = memoryview(data), 0, len(data)
        while i < n and not self.ended:
            if self._left:
                take = min(self._left, n - i)
                if self._meta is not None:
                    self._meta += view[i:i + take]
                else:
                    self.body(view[i:i + take])
                i, self.offset, self._left = i + take, self.offset + take, self._left - take
                if not self._left:
                    self._end()
            elif self._pad:
                take = min(self._pad, n - i)
                i, self.offset, self._pad = i + take, self.offset + take, self._pad - take
            else:
                take = min(BLOCK - len(self._header), n - i)
                self._header += view[i:i + take]
                i, self.offset = i + take, self.offset + take
                if len(self._header) == BLOCK:
                    block = bytes(self._header)
                    self._header.clear()
                    self._start(block)

    def member(self, name: str, size: int, kind: bytes) -> None:
        """A member's header was read; its body (``size`` bytes) starts at ``self.offset``."""

    def body(self, piece: memoryview) -> None:
        """A piece of the current member's content."""

    def member_end(self) -> None:
        """The current member's content is complete."""

    def _start(self, block: bytes) -> None:
        if block == bytes(BLOCK):
            self.ended = True  # the first of the two zero blocks that end an archive
            return
        kind = block[156:157]
        size = int(self._next["size"]) if "size" in self._next else number(block[124:136])
        name = self._next.get("path") or header_name(block)
        self._next = {}
        self._left, self._pad = size, -size % BLOCK
        if kind in META_TYPES:
            if size > MAX_META:
                raise TarFormatError(f"a {kind.decode()!r} header of {size} bytes: not a base backup's tar")
            self._meta, self._meta_type = bytearray(), kind
        else:
            self.member(relative(name), size, kind)
        if not size:
            self._end()

    def _end(self) -> None:
        if self._meta is None:
            self.member_end()
            return
        body, kind, self._meta = bytes(self._meta), self._meta_type, None
        if kind == PAX:
            self._next = pax_records(body)
        elif kind == GNU_LONGNAME:
            self._next = {"path": long_name(body)}
