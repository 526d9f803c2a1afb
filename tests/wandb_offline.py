"""Reading a W&B offline run file (``run-ID.wandb``) back, for the tracker tests.

wandb 0.31 writes the file from its Go core and ships no Python reader any more (its old
``wandb.sdk.internal.datastore`` is gone), so the framing is read here as W&B's own writer
documents it (LevelDB's log format: a 7-byte file header ``:W&B`` + magic 0xBEE1 + version, then
32 KiB blocks of records, each with a 7-byte header: CRC32, length, type FULL/FIRST/MIDDLE/LAST)
and each payload is parsed with wandb's own protobuf, ``wandb.proto.wandb_internal_pb2.Record``.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def payloads(path: Path):
    data = Path(path).read_bytes()
    ident, magic, _version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1, f"{path} is not a W&B run file"
    pos, pending = HEADER, b""
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:  # the block's tail is padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + HEADER])
        if kind == 0 and length == 0:  # zero-filled: padding or the end
            pos += left
            continue
        chunk = data[pos + HEADER : pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield chunk
        elif kind == FIRST:
            pending = chunk
        elif kind == MIDDLE:
            pending += chunk
        elif kind == LAST:
            yield pending + chunk
            pending = b""


def read_run(path: Path) -> tuple[str, list[dict]]:
    """(run id, history rows as {key: value} with ``_step``) of one offline run file."""
    from wandb.proto.wandb_internal_pb2 import Record

    run_id, rows = "", []
    for payload in payloads(path):
        record = Record()
        record.ParseFromString(payload)
        which = record.WhichOneof("record_type")
        if which == "run":
            run_id = record.run.run_id
        elif which == "history":
            row = {}
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                row[key] = json.loads(item.value_json)
            if record.history.HasField("step"):
                row.setdefault("_step", record.history.step.num)
            rows.append(row)
    return run_id, rows
