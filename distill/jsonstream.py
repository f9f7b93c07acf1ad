"""A JSON document's top-level arrays read entry by entry, a chunk of the file at a time: what
`json.loads` of a COCO annotation file gives (each entry the same Python value), without the
whole file's Python objects at once (about 5× the file's size: 1.6 GB of keypoint annotations
for a million images would take ~8 GB). Entries are parsed by `json`'s own C scanner, so it is
as fast as `json.loads`; only the two levels around them are walked here."""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Iterator
from typing import IO, Any

__all__ = ["NOT_AN_OBJECT", "top_level_arrays"]

CHUNK = 1 << 22  # characters decoded at a time
NOT_AN_OBJECT = object()  # yielded (key None) for a document that is not a JSON object
_NUMBER_GOES_ON = frozenset("0123456789.eE+-")
_WHITESPACE = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


class _Buffer:
    """The undecoded rest of a byte stream, decoded as `json.loads` decodes bytes."""

    def __init__(self, stream: IO[bytes]) -> None:
        self.stream = stream
        head = stream.read(4)  # json.detect_encoding: a BOM, or where the zero bytes are
        self.decoder = codecs.getincrementaldecoder(json.detect_encoding(head))("surrogatepass")
        self.text = self.decoder.decode(head)
        self.pos = 0  # in `text`
        self.base = 0  # characters before `text`
        self.eof = False

    def more(self) -> bool:
        """Append the next chunk; False at the end of the stream."""
        if self.eof:
            return False
        data = self.stream.read(max(CHUNK, len(self.text) - self.pos))  # a long value: doubling
        self.eof = not data
        self.base += self.pos
        self.text = self.text[self.pos:] + self.decoder.decode(data, final=self.eof)
        self.pos = 0
        return not self.eof

    def skip(self) -> str:
        """Skip whitespace; the next character ('' at the end of the stream)."""
        while True:
            self.pos = _WHITESPACE.match(self.text, self.pos).end()  # type: ignore[union-attr]
            if self.pos < len(self.text) or not self.more():
                return self.text[self.pos:self.pos + 1]

    def expect(self, chars: str) -> str:
        found = self.skip()
        if not found or found not in chars:
            self.fail(f"Expecting {' or '.join(repr(c) for c in chars)}")
        self.pos += 1
        return found

    def value(self) -> Any:
        """The JSON value at the cursor, and the cursor past it. A value is taken only when
        something other than a number's character follows it in the buffer (a number cut by
        the chunk's end, `12` of `12.5`, still parses)."""
        self.skip()
        while True:
            try:
                obj, end = _DECODER.raw_decode(self.text, self.pos)
            except json.JSONDecodeError as exc:
                cut = exc.pos >= len(self.text) - 6 or exc.msg.startswith("Unterminated")
                if cut and self.more():  # the value goes on in the next chunk
                    continue
                self.fail(exc.msg, exc.pos)
            cut = end == len(self.text) or self.text[end] in _NUMBER_GOES_ON
            if not cut or not self.more():
                self.pos = end
                return obj

    def fail(self, message: str, pos: int | None = None) -> None:
        where = self.base + (self.pos if pos is None else pos)
        raise ValueError(f"{message}: char {where}")


def top_level_arrays(stream: IO[bytes], names: tuple[str, ...]) -> Iterator[
        tuple[str | None, int, Any]]:
    """(key, index, entry) for every entry of the top-level arrays `names`, in the file's
    order, after (key, -1, []) for the array itself; (key, -1, value) for a key of `names`
    whose value is not an array; and
    (None, -1, NOT_AN_OBJECT) for a document that is not an object. Other keys' values are
    parsed and left out. Raises ValueError where `json.loads` would."""
    buf = _Buffer(stream)
    if buf.skip() != "{":
        buf.value()  # a valid document that is not an object, or json's error
        if buf.skip():
            buf.fail("Extra data")
        yield None, -1, NOT_AN_OBJECT
        return
    buf.pos += 1
    closing = buf.expect('"}')
    seen: set[str] = set()
    while closing != "}":
        buf.pos -= 1
        key = buf.value()
        if key in names and key in seen:  # json.loads would keep the last one only
            buf.fail(f"{key!r} appears twice")
        seen.add(key)
        buf.expect(":")
        if key in names and buf.skip() == "[":
            buf.pos += 1
            yield key, -1, []  # an array: its entries follow
            if buf.skip() == "]":
                buf.pos += 1
            else:
                index = 0
                while True:
                    yield key, index, buf.value()
                    index += 1
                    if buf.expect(",]") == "]":
                        break
        else:
            value = buf.value()
            if key in names:
                yield key, -1, value
        if buf.expect(",}") == ",":
            buf.expect('"')
        else:
            closing = "}"
    if buf.skip():
        buf.fail("Extra data")
