"""Answers larger than one message, an app inventory above all: a simulated Windows device's
Results split across the messages of its package under the server's MaxMsgSize.

A Get's Results come from a generator of tree nodes (:class:`ResultsStream`); :func:`fill`
takes as many Items as the message being built has room for, so a megabyte inventory is
never held whole. Items go on in the next message of the package (the gateway collects a
Get's Results until the package's final message); an Item too large for any message goes as
an OMA-DM large object, its data in chunks with ``MoreData`` and its ``Size`` on the first.

Room is judged by an upper bound of each Item's encoded size (exact for XML text, generous
for WBXML), because :class:`~mdmgate.syncml.MessageBuilder` refuses every push after the
first that does not fit; should a bound ever fall short, the message is built again from
what went in before (:meth:`Outgoing.restart`) with less.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

from mdmgate.simulate import windows_tree as tree
from mdmgate.syncml import Command, Header, Item, MessageBuilder

__all__ = ["Outgoing", "ResultsStream", "fill", "item_cost"]

#: Bytes a Results command costs besides its Items (tags, CmdID, MsgRef, CmdRef).
RESULTS_OVERHEAD: Final = 120
#: A chunk's MoreData and Size on top of an Item.
MORE_DATA_OVERHEAD: Final = 96
#: A chunk smaller than this is not worth a message of its own: wait for the next one.
MIN_CHUNK: Final = 256


class Outgoing:
    """The device message being filled: a MessageBuilder that can start over."""

    __slots__ = ("builder", "content", "header", "limit", "pushed", "wbxml")

    def __init__(self, header: Header, limit: int, wbxml: bool) -> None:
        self.header, self.limit, self.wbxml = header, limit, wbxml
        self.builder = MessageBuilder(header, limit, wbxml=wbxml)
        self.pushed: list[Command] = []
        #: Whether anything but Statuses went in: a large object starts only in a message
        #: that has room to spare.
        self.content = False

    def push(self, command: Command) -> bool:
        if self.builder.push(command) is None:
            return False
        self.pushed.append(command)
        return True

    def restart(self) -> None:
        """The message again with what went in so far (after a push that did not fit)."""
        self.builder = MessageBuilder(self.header, self.limit, wbxml=self.wbxml)
        for command in self.pushed:
            self.builder.push(command)


class ResultsStream:
    """The Results of one Get, drawn from ``nodes`` as messages have room for them."""

    __slots__ = ("back", "chunk", "cmd_ref", "msg_ref", "nodes")

    def __init__(self, msg_ref: str, cmd_ref: str, nodes: Iterator[tree.Node]) -> None:
        self.msg_ref = msg_ref
        self.cmd_ref = cmd_ref
        self.nodes = nodes
        #: Nodes taken from the generator that did not fit yet, the next one last.
        self.back: list[tree.Node] = []
        #: A large object under way: its node and how much of its data went already.
        self.chunk: tuple[tree.Node, int] | None = None

    def next(self) -> tree.Node | None:
        if self.back:
            return self.back.pop()
        return next(self.nodes, None)

    def put_back(self, nodes: list[tree.Node]) -> None:
        self.back.extend(reversed(nodes))


def fill(out: Outgoing, stream: ResultsStream) -> bool:
    """Puts as much of ``stream`` as fits into ``out``; True when all of it is out."""
    wbxml = out.wbxml
    shrink = 1.0
    while True:
        if stream.chunk is not None:
            if not _fill_chunk(out, stream):
                return False
            continue
        room = int(out.builder.remaining * shrink) - RESULTS_OVERHEAD
        taken: list[tree.Node] = []
        cost = 0
        while (node := stream.next()) is not None:
            size = item_cost(node, wbxml)
            if cost + size > room:
                stream.put_back([node])
                break
            taken.append(node)
            cost += size
        if not taken:
            if not stream.back:
                return True
            size = item_cost(stream.back[-1], wbxml) + RESULTS_OVERHEAD
            if out.content or (len(out.pushed) > 1 and size < out.limit // 2):
                return False  # the next message has room for it
            stream.chunk = (stream.back.pop(), 0)  # too large for any message
            continue
        results = Command(
            "Results",
            msg_ref=stream.msg_ref,
            cmd_ref=stream.cmd_ref,
            items=[tree.as_item(n) for n in taken],
        )
        if not out.push(results):
            stream.put_back(taken)
            out.restart()
            shrink *= 0.75
            continue
        out.content = True
        return not stream.back


def _fill_chunk(out: Outgoing, stream: ResultsStream) -> bool:
    """The next chunk of the large object under way; True when it was the last."""
    assert stream.chunk is not None
    node, offset = stream.chunk
    data = node.data
    empty = tree.Node(node.uri, node.format, "")
    for shrink in (1.0, 0.75, 0.5):
        room = int(out.builder.remaining * shrink) - RESULTS_OVERHEAD - MORE_DATA_OVERHEAD
        room -= item_cost(empty, out.wbxml)
        if room < MIN_CHUNK:
            return False
        piece = data[offset : offset + room]
        while piece and (cost := data_cost(piece, out.wbxml)) > room:
            piece = piece[: max(1, len(piece) * room // cost - 1)]
        end = offset + len(piece)
        last = end >= len(data)
        meta: dict[str, str | list[str]] = {"Format": node.format}
        if offset == 0:
            meta["Size"] = str(len(data.encode()) if isinstance(data, str) else len(data))
        item = Item(source=node.uri, meta=meta, data=piece, more_data=not last)
        chunk = Command("Results", msg_ref=stream.msg_ref, cmd_ref=stream.cmd_ref, items=[item])
        if out.push(chunk):
            out.content = True
            stream.chunk = None if last else (node, end)
            return last
        out.restart()
    return False


def data_cost(data: str | bytes, wbxml: bool) -> int:
    """An upper bound of the bytes ``data`` takes in a message: UTF-8, escaped once in XML
    (binary data as base64), opaque in WBXML."""
    if isinstance(data, bytes):
        return len(data) + 4 if wbxml else (len(data) + 2) // 3 * 4
    size = len(data) if data.isascii() else len(data.encode())
    if wbxml:
        return size + 4
    escapes = 3 * (data.count("<") + data.count(">")) + 4 * (data.count("&") + data.count("\r"))
    return size + escapes


def item_cost(node: tree.Node, wbxml: bool) -> int:
    """An upper bound of what one node costs as a Results Item."""
    if wbxml:
        return 32 + len(node.uri) + len(node.format) + data_cost(node.data, True)
    return (
        tree.ITEM_OVERHEAD
        + data_cost(node.uri, False)
        + len(node.format)
        + data_cost(node.data, False)
    )
