"""wandb's transaction log (benchmark/tracking/wandb_log.py): a log is complete only when its
intact records include the exit record."""

from __future__ import annotations

import json
import struct

import pytest

pytest.importorskip("wandb")

from wandb.proto import wandb_internal_pb2  # noqa: E402

from benchmark.tracking import wandb_log  # noqa: E402


def test_log_completeness_check():
    data = _log_bytes_with_exit()
    assert wandb_log.log_has_exit(data)
    for cut in range(len(data)):  # a log cut anywhere is incomplete
        assert not wandb_log.log_has_exit(data[:cut]), cut
    corrupt = bytearray(data)
    corrupt[-1] ^= 0xFF  # the exit record fails its checksum
    assert not wandb_log.log_has_exit(bytes(corrupt))


def _log_bytes_with_exit() -> bytes:
    """A transaction log (header, a 70 kB summary record spanning three blocks, an exit record)
    written by the LevelDB-log rules independently of benchmark.tracking."""
    import zlib

    big = wandb_internal_pb2.Record()
    big.summary.update.add(key="text", value_json=json.dumps("x" * 70_000))
    end = wandb_internal_pb2.Record()
    end.exit.exit_code = 0
    out = bytearray(b":W&B\xe1\xbe\x00")
    for payload in (big.SerializeToString(), end.SerializeToString()):
        first = True
        while True:
            room = 32768 - len(out) % 32768
            if room < 7:
                out += bytes(room)
                continue
            chunk, payload = payload[: room - 7], payload[room - 7 :]
            kind = (1 if not payload else 2) if first else (4 if not payload else 3)
            out += struct.pack("<IHB", zlib.crc32(bytes([kind]) + chunk), len(chunk), kind)
            out += chunk
            first = False
            if not payload:
                break
    return bytes(out)
