"""An age file read chunk by chunk, so a reader can pass over chunks it does not need without decrypting them.

pyrage decrypts a whole stream or nothing. A framed base backup (core/frames.py) is one age stream of
zstd frames, and a tenant restore wants only some of the frames; this reads the same format
(age-encryption.org/v1, https://github.com/C2SP/C2SP/blob/main/age.md) for X25519 recipients, the only
kind drp writes (core/crypto.py), with `cryptography`'s primitives:

- the header: each ``X25519`` stanza unwrapped with each identity (HKDF-SHA-256 of the shared secret,
  salt = ephemeral share || our public key, then ChaCha20-Poly1305 with a zero nonce); the header MAC
  (HMAC-SHA-256 keyed by HKDF(file key, info "header")) checked before anything else is read;
- the payload: a 16-byte nonce, then 64 KiB chunks each sealed with ChaCha20-Poly1305 under
  HKDF(file key, salt = nonce, info "payload"), the nonce of chunk i being i as 11 big-endian bytes and a
  last-chunk flag byte. A chunk's counter is its position and the last one is flagged, so a chunk moved,
  swapped, dropped or cut short fails authentication.

Chunks passed over are still read (and the caller hashes every byte read: ``read_verified`` checks the
whole object's size and SHA-256 after the last one). It is also faster than pyrage on the chunks it does
decrypt (``cryptography``'s ChaCha20-Poly1305 is OpenSSL's): docs/benchmarks.md.
"""

from __future__ import annotations

import base64
import hmac
from collections.abc import Iterator, Sequence
from hashlib import sha256
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dr_pipelines.core.crypto import DecryptionError, WrongKeyError

INTRO = b"age-encryption.org/v1\n"
CHUNK = 64 * 1024  # plaintext bytes per payload chunk
TAG = 16
SEALED = CHUNK + TAG
MAX_HEADER_LINE = 1024
MAX_STANZAS = 64
X25519_INFO = b"age-encryption.org/v1/X25519"
KEY_FIX = ("use the age identity (private key) matching the backup's recipients; if it does match, the object is "
           "damaged")
_BECH32 = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"


def x25519_keys(identities: Sequence[object]) -> list[X25519PrivateKey] | None:
    """The identities as X25519 private keys, or None when one is not an age X25519 identity (the caller
    then decrypts with pyrage). pyrage's Identity prints as its ``AGE-SECRET-KEY-1…`` string."""
    keys = []
    for identity in identities:
        secret = _bech32_decode(str(identity), "age-secret-key-")
        if secret is None or len(secret) != 32:
            return None
        keys.append(X25519PrivateKey.from_private_bytes(secret))
    return keys


def _bech32_decode(text: str, hrp: str) -> bytes | None:
    """BIP 173 bech32 (age's key encoding) of ``hrp``: the data bytes, or None if not that or not valid."""
    text = text.strip().lower()
    if not text.startswith(hrp + "1"):
        return None
    try:
        values = [_BECH32.index(c) for c in text[len(hrp) + 1:]]
    except ValueError:
        return None
    check = 1
    for v in [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp] + values:
        top, check = check >> 25, (check & 0x1FFFFFF) << 5 ^ v
        for i, g in enumerate((0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)):
            check ^= g if (top >> i) & 1 else 0
    if check != 1 or len(values) < 6:
        return None
    acc, bits, out = 0, 0, bytearray()
    for v in values[:-6]:
        acc, bits = (acc << 5) | v, bits + 5
        if bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
    return bytes(out) if bits < 5 and not acc & ((1 << bits) - 1) else None


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def _b64(text: bytes, what: str) -> bytes:
    """age's base64: standard alphabet, no padding, canonical (re-encoding gives the same text)."""
    try:
        raw = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise _malformed(f"{what} is not base64") from None
    if base64.b64encode(raw).rstrip(b"=") != text:
        raise _malformed(f"{what} is not canonical base64")
    return raw


def _malformed(problem: str) -> DecryptionError:
    return DecryptionError(f"the age header is malformed ({problem})", fix="the object is damaged: use another backup")


class AgeChunks:
    """The payload of the age file that ``reader`` holds (``size`` bytes in all), one chunk at a time.

    ``next_chunk(decrypt)`` reads the next sealed chunk and returns its plaintext, or None when ``decrypt``
    is False (read past). ``plain_size`` is the payload's plaintext length, known from ``size``: a truncated
    or extended object then fails on its last chunk (and the caller's size check).
    """

    def __init__(self, reader: BinaryIO, keys: Sequence[X25519PrivateKey], size: int, *, what: str) -> None:
        self._reader = reader
        self._what = what
        self._buffer = b""
        header_len, file_key = self._header(keys)
        nonce = self._read(16)
        if len(nonce) != 16:
            raise DecryptionError(f"cannot decrypt {what}: it ends inside the age header", fix="the object is damaged")
        self._aead = ChaCha20Poly1305(_hkdf(file_key, nonce, b"payload"))
        sealed = size - header_len - 16
        self.chunks = max(1, -(-sealed // SEALED))
        self.plain_size = sealed - self.chunks * TAG
        self.next_index = 0
        if self.plain_size < 0:
            raise DecryptionError(f"cannot decrypt {what}: it is too short for its age header",
                                  fix="the object is damaged: use another backup")

    def next_chunk(self, decrypt: bool = True) -> bytes | None:
        index = self.next_index
        if index >= self.chunks:
            raise DecryptionError(f"cannot decrypt {self._what}: read past its last chunk", fix="the object is damaged")
        last = index == self.chunks - 1
        want = self.plain_size - index * CHUNK + TAG if last else SEALED
        sealed = self._read(want)
        self.next_index += 1
        if len(sealed) != want:
            raise self._damaged()
        if not decrypt:
            return None
        try:
            return self._aead.decrypt(index.to_bytes(11, "big") + (b"\x01" if last else b"\x00"), sealed, None)
        except InvalidTag:
            raise self._damaged() from None

    def _damaged(self) -> DecryptionError:
        return DecryptionError(f"cannot decrypt {self._what}: the ciphertext is damaged (authentication failed)",
                               fix="the object is corrupted: use another backup")

    def _header(self, keys: Sequence[X25519PrivateKey]) -> tuple[int, bytes]:
        """(header length, file key): the stanzas read, ours unwrapped, the MAC checked."""
        seen = bytearray()
        intro = self._read(len(INTRO))
        seen += intro
        if intro != INTRO:
            raise DecryptionError(f"cannot decrypt {self._what}: it is not an age file (v1)",
                                  fix="the object is damaged, or not a drp backup object")
        stanzas: list[tuple[list[bytes], bytes]] = []
        while True:
            line = self._line()
            if line.startswith(b"--- "):
                seen += b"---"
                mac = _b64(line[4:-1], "the header MAC")
                break
            seen += line
            if not line.startswith(b"-> ") or len(stanzas) >= MAX_STANZAS:
                raise _malformed("a line that is neither a stanza nor the MAC")
            args, body = line[3:-1].split(b" "), bytearray()
            while True:
                body_line = self._line()
                seen += body_line
                body += body_line[:-1]
                if len(body_line) - 1 < 64:
                    break
            stanzas.append((args, _b64(bytes(body), "a stanza body")))
        file_key = self._unwrap(stanzas, keys)
        if not hmac.compare_digest(hmac.new(_hkdf(file_key, b"", b"header"), bytes(seen), sha256).digest(), mac):
            raise DecryptionError(f"cannot decrypt {self._what}: its age header's MAC does not match",
                                  fix="the object is damaged: use another backup")
        return len(seen) + len(line) - 3, file_key

    def _unwrap(self, stanzas: list[tuple[list[bytes], bytes]], keys: Sequence[X25519PrivateKey]) -> bytes:
        for args, body in stanzas:
            if args[0] != b"X25519":
                continue
            if len(args) != 2 or len(body) != 32:
                raise _malformed("an X25519 stanza of the wrong shape")
            share = _b64(args[1], "an X25519 share")
            if len(share) != 32:
                raise _malformed("an X25519 share of the wrong length")
            for key in keys:
                try:
                    shared = key.exchange(X25519PublicKey.from_public_bytes(share))
                except ValueError:  # a low-order share: an all-zero secret
                    raise _malformed("an X25519 share of low order") from None
                ours = key.public_key().public_bytes_raw()
                try:
                    return ChaCha20Poly1305(_hkdf(shared, share + ours, X25519_INFO)).decrypt(bytes(12), body, None)
                except InvalidTag:
                    continue
        raise WrongKeyError(f"cannot decrypt {self._what}: no identity matches its recipients", fix=KEY_FIX)

    def _line(self) -> bytes:
        """One header line, with its newline."""
        while (end := self._buffer.find(b"\n")) < 0:
            if len(self._buffer) > MAX_HEADER_LINE:
                raise _malformed("a line longer than any age header line")
            more = self._reader.read(4096)
            if not more:
                raise DecryptionError(f"cannot decrypt {self._what}: it ends inside the age header",
                                      fix="the object is damaged: use another backup")
            self._buffer += more
        line, self._buffer = self._buffer[:end + 1], self._buffer[end + 1:]
        return line

    def _read(self, n: int) -> bytes:
        """Exactly ``n`` bytes (fewer only at the end of the object)."""
        parts, have = [self._buffer[:n]], min(n, len(self._buffer))
        self._buffer = self._buffer[n:]
        while have < n:
            more = self._reader.read(n - have)
            if not more:
                break
            parts.append(more)
            have += len(more)
        return b"".join(parts)


def plaintext(chunks: AgeChunks) -> Iterator[bytes]:
    """Every chunk decrypted, in order (the whole payload)."""
    while chunks.next_index < chunks.chunks:
        data = chunks.next_chunk()
        assert data is not None
        yield data
