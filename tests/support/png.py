"""Write tiny PNG files by hand (no image library), with text chunks for embedded workflows."""

from __future__ import annotations

import struct
import zlib


def chunk(ctype: bytes, body: bytes) -> bytes:
    return (struct.pack(">I", len(body)) + ctype + body
            + struct.pack(">I", zlib.crc32(ctype + body) & 0xFFFFFFFF))


def png_bytes(text_chunks: list[tuple[bytes, bytes]] = ()) -> bytes:
    """A valid 1x1 grey PNG carrying the given (chunk type, body) text chunks."""
    ihdr = struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00\x80")
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    for ctype, body in text_chunks:
        out += chunk(ctype, body)
    return out + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def text(key: str, value: str) -> tuple[bytes, bytes]:
    return b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")


def ztext(key: str, value: str) -> tuple[bytes, bytes]:
    return b"zTXt", key.encode("latin-1") + b"\0\0" + zlib.compress(value.encode("latin-1"))


def itext(key: str, value: str, compressed: bool = True) -> tuple[bytes, bytes]:
    data = value.encode("utf-8")
    if compressed:
        data = zlib.compress(data)
    return b"iTXt", (key.encode("latin-1") + b"\0" + bytes([int(compressed), 0]) + b"en\0"
                     + key.encode("utf-8") + b"\0" + data)
