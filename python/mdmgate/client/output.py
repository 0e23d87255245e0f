"""What the client commands print: aligned tables and key/value blocks for people, JSON for
scripts, and lines that change in place (a roll-out's progress).

Text from the gateway repeats what devices reported (ids, names, facts); before it reaches a
person's terminal every control character in it is shown escaped, so a device cannot move
the cursor or retitle the window of whoever lists it.
"""

from __future__ import annotations

import datetime
import json
import re
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

__all__ = [
    "LiveLines",
    "Output",
    "cell",
    "fields",
    "json_line",
    "json_text",
    "plural",
    "printable",
    "table",
    "timestamp",
]

#: C0 and C1 control characters, DEL included (newline and tab too: a cell is one line).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
#: Erase the line; move to the start of the line N lines up.
_ERASE_LINE = "\x1b[2K"


@dataclass
class Output:
    """Where a command writes: ``stream`` (stdout) for its answer, as JSON when ``json``;
    ``tty`` when a person watches it on a terminal; ``notes`` (stderr) for what is said
    beside the answer (how to get the next page)."""

    stream: TextIO
    notes: TextIO
    json: bool
    tty: bool

    def write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def note(self, text: str) -> None:
        self.notes.write(f"mdmgate: {printable(text)}\n")
        self.notes.flush()


def printable(text: str, *, keep_lines: bool = False) -> str:
    """``text`` with its control characters as ``\\xNN`` (newlines and tabs kept with
    ``keep_lines``)."""

    def escape(found: re.Match[str]) -> str:
        char = found.group()
        if keep_lines and char in "\n\t":
            return char
        return f"\\x{ord(char):02x}"

    return _CONTROL.sub(escape, text)


def cell(value: Any, width: int | None = None) -> str:
    """One table cell: ``-`` for nothing, yes/no for booleans, strings as they are, anything
    else as compact JSON; one printable line, cut to ``width`` with an ellipsis."""
    if value is None or value == "":
        text = "-"
    elif isinstance(value, bool):
        text = "yes" if value else "no"
    elif isinstance(value, str):
        text = value
    elif isinstance(value, int | float):
        text = str(value)
    else:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    text = printable(text)
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Rows under their headers, each column as wide as its widest cell, two spaces apart
    (no trailing spaces); the empty string when there are no rows."""
    cells = [[cell(v) for v in row] for row in rows]
    if not cells:
        return ""
    widths = [len(h) for h in headers]
    for row in cells:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = [headers, *cells]
    return "".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def fields(pairs: Sequence[tuple[str, Any]]) -> str:
    """A key/value block: the values aligned after the longest key."""
    width = max((len(k) for k, _ in pairs), default=0)
    return "".join(f"{k.ljust(width)}  {cell(v)}".rstrip() + "\n" for k, v in pairs)


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def timestamp(value: Any) -> str | None:
    """A time as the gateway gives it (RFC 3339 text, or Unix seconds) as RFC 3339 UTC."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int | float):
        moment = datetime.datetime.fromtimestamp(value, datetime.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return str(value)


def json_text(value: Any) -> str:
    """A JSON document for scripts (indented, UTF-8 as is), with its newline."""
    return json.dumps(value, indent=2, ensure_ascii=False) + "\n"


def json_line(value: Any) -> str:
    """One JSON value on one line (JSON lines), with its newline."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")) + "\n"


class LiveLines:
    """Lines that change over time, each under a key. On a terminal (``tty``) the block is
    drawn again in place whenever a line changed; elsewhere (a pipe, a file) each line is
    printed when it first appears and again only when it changed, so a log of the output
    reads as the history of the changes."""

    def __init__(self, stream: TextIO, *, tty: bool) -> None:
        self.stream = stream
        self.tty = tty
        self._drawn: list[str] = []
        self._height = 0
        self._printed: dict[str, str] = {}

    def show(self, lines: Sequence[tuple[str, str]]) -> None:
        texts = [printable(text) for _, text in lines]
        if self.tty:
            # A line wider than the terminal wraps onto two rows, and moving up by lines
            # would then draw over the wrong ones: each is cut to fit.
            width = shutil.get_terminal_size().columns - 1
            texts = [t if len(t) <= width else t[: width - 1] + "…" for t in texts]
            if texts == self._drawn:
                return
            out = []
            if self._height:
                out.append(f"\x1b[{self._height}F")
            out += [f"{_ERASE_LINE}{text}\n" for text in texts]
            # A block that got shorter leaves nothing of the old one below it.
            blank = max(0, self._height - len(texts))
            out += [f"{_ERASE_LINE}\n"] * blank
            self.stream.write("".join(out))
            self._drawn = texts
            self._height = len(texts) + blank
        else:
            for (key, _), text in zip(lines, texts, strict=True):
                if self._printed.get(key) != text:
                    self.stream.write(text + "\n")
                    self._printed[key] = text
        self.stream.flush()
