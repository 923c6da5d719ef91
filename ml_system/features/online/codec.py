"""The one value format both online backends store, and the layout that names its values.

A stored payload is ``layout + values``: a 9-byte *layout id* (``L`` and 8 hex digits
of a hash of the view's field names, in order), then the values in that order as one
MessagePack array. The store's meta values map each layout id to its field names
(``layout:<view>:<id>``), registered before the first row that uses it is written.
A reader whose view has the same field names compares 9 bytes per row and takes the
values by position, as before; a row written under an older schema (fields reordered,
added or removed) is decoded by name, and a field it lacks reads as missing (None).
The cost is about 0.1 µs per row decoded (a 100-row decode loop went from 41 to 52 µs in
``timeit``: the tag test and two slices), well inside ``benchmarks/online_lookup.py``'s noise.

Rejected: values keyed by name in every row (a MessagePack map): the names would be
stored in every row, and a 10-field row would decode a dict and pick from it per
request; and a per-view layout kept beside the rows but not in them: a schema change
would have to rewrite every stored row at once, or readers would mix the two.

Why MessagePack: ``None``, bool, int, float, str and bytes round-trip exactly; decoding a
10-value row takes about a third of ``json.loads``, and floats keep every bit.

Rows written by earlier versions still decode: a payload that does not start with ``L``
is a bare MessagePack array (first byte 0x90-0x9f, 0xdc or 0xdd) or JSON text (``[``),
and has no layout (``LEGACY``): the reader resolves it by the layout recorded for the
view's legacy rows when its schema first changed, or else its own.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import msgpack

LEGACY = b""
TAG = ord("L")
"""First byte of a payload with a layout id; readers test it inline, once per row."""
LAYOUT_WIDTH = 9
_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def layout_id(fields: Sequence[str]) -> bytes:
    """A short, stable id of an ordered field list (content-addressed: every writer computes the same)."""
    digest = hashlib.blake2b("\x1f".join(fields).encode(), digest_size=4).hexdigest()
    return b"L" + digest.encode()


def layout_meta_name(view: str, layout: bytes) -> str:
    """Meta name holding a layout's field names; the legacy rows' layout is ``layout:<view>:legacy``."""
    return f"layout:{view}:{layout.decode() if layout else 'legacy'}"


def dump_fields(fields: Sequence[str]) -> str:
    return json.dumps(list(fields))


def load_fields(text: str) -> tuple[str, ...]:
    return tuple(json.loads(text))


def pack_values(layout: bytes, values: list[Any]) -> bytes:
    return layout + _packer.pack(values)


def unpack_values(payload: bytes | memoryview | str) -> tuple[list[Any], bytes]:
    """``(values, layout)`` of one payload in any format ever written."""
    if isinstance(payload, str):
        return json.loads(payload), LEGACY
    if payload[0] == TAG:
        return msgpack.unpackb(payload[LAYOUT_WIDTH:]), bytes(payload[:LAYOUT_WIDTH])
    if payload[:1] == b"[":
        return json.loads(bytes(payload)), LEGACY
    return msgpack.unpackb(payload), LEGACY
