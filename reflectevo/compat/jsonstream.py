"""JSON records read from JSONL or from concatenated (pretty-printed) JSON objects, streamed, with
file:line errors."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reflectevo.errors import ReflectEvoError


def iter_json_objects(path: str | Path, block: int = 1 << 22) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line where the object starts, object) for JSONL or concatenated pretty-printed JSON.

    Streams: reads `block` bytes at a time, so a multi-gigabyte file (the published 460K set) needs
    memory for about one block and one object. A bad object raises ReflectEvoError naming ``file:line``
    of the object that failed, its byte offset, and where inside it the parser stopped.
    """
    import codecs

    path = Path(path)
    if not path.is_file():
        raise ReflectEvoError(f"{path}: file not found")
    dec = json.JSONDecoder()
    ws = re.compile(r"[\s\ufeff]*")
    utf8 = codecs.getincrementaldecoder("utf-8")()
    buf, pos, line, consumed, eof = "", 0, 1, 0, False   # consumed: file bytes before `buf`
    with path.open("rb") as fh:

        def fill() -> None:
            nonlocal buf, pos, consumed, eof
            consumed += len(buf[:pos].encode("utf-8"))
            buf, pos = buf[pos:], 0
            chunk = fh.read(block)
            eof = not chunk
            try:
                buf += utf8.decode(chunk, final=eof)
            except UnicodeDecodeError as e:
                bad_line = line + buf.count("\n") + chunk[:e.start].count(b"\n")
                raise ReflectEvoError(f"{path}:{bad_line}: not UTF-8 text (byte offset "
                                      f"{consumed + len(buf.encode('utf-8')) + e.start})") from None

        while True:
            end_ws = ws.match(buf, pos).end()  # type: ignore[union-attr]
            line += buf.count("\n", pos, end_ws)
            pos = end_ws
            if pos >= len(buf):
                if eof:
                    return
                fill()
                continue
            try:
                obj, end = dec.raw_decode(buf, pos)
            except json.JSONDecodeError as e:
                if not eof:            # perhaps only cut off by the block: read on and try again
                    fill()
                    continue
                start_byte = consumed + len(buf[:pos].encode("utf-8"))
                file_line = line - buf.count("\n", 0, pos) + e.lineno - 1   # e.lineno counts from buf[0]
                raise ReflectEvoError(f"{path}:{line}: malformed JSON in the object starting at byte offset "
                                      f"{start_byte}: {e.msg} (line {file_line}, column {e.colno})") from None
            if not isinstance(obj, dict):
                if end >= len(buf) and not eof:   # a bare number may go on in the next block
                    fill()
                    continue
                raise ReflectEvoError(f"{path}:{line}: expected a JSON object, got {type(obj).__name__}")
            yield line, obj
            line += buf.count("\n", pos, end)
            pos = end
