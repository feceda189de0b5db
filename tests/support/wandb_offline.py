"""W&B in tests: an isolated environment (no server, no credentials) and offline runs read
back from their transaction logs."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest


# ------------------------------------------------------------------ transaction log reader
def read_transaction_log(path: Path) -> list:
    """The records of a ``run-<id>.wandb`` file: a 7-byte header (``:W&B``, magic, version),
    then LevelDB-log blocks of 32 KiB whose chunks (crc32, length, type) carry serialized
    ``wandb_internal_pb2.Record`` messages, possibly split over blocks."""
    from wandb.proto import wandb_internal_pb2  # lazy: wandb is slow to import

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", "not a W&B transaction log"
    block, pos, parts, out = 32768, 7, [], []
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # block trailer: padding
            pos += room
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        if kind == 0 and length == 0:  # zero padding
            pos += room
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 2):  # full, first
            parts = [chunk]
        elif kind in (3, 4):  # middle, last
            parts.append(chunk)
        else:
            raise AssertionError(f"unknown chunk type {kind}")
        if kind in (1, 4):
            rec = wandb_internal_pb2.Record()
            rec.ParseFromString(b"".join(parts))
            out.append(rec)
    return out


def _key(item) -> str:
    return "/".join(item.nested_key) if item.nested_key else item.key


class OfflineRun:
    """What an offline run folder holds: run metadata, config, history, summary, artifacts."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        (log,) = self.folder.glob("run-*.wandb")
        self.records = read_transaction_log(log)
        kinds = [r.WhichOneof("record_type") for r in self.records]
        assert kinds.count("run") == 1 and "exit" in kinds, f"incomplete log {log}: {kinds}"
        (self.run,) = [r.run for r, k in zip(self.records, kinds, strict=True) if k == "run"]
        self.config = {_key(u): json.loads(u.value_json) for u in self.run.config.update}
        self.history, self.summary, self.artifacts, self.exit_codes = [], {}, [], []
        for rec, kind in zip(self.records, kinds, strict=True):
            if kind == "config":
                for u in rec.config.update:
                    self.config[_key(u)] = json.loads(u.value_json)
                for r in rec.config.remove:
                    self.config.pop(_key(r), None)
            elif kind == "history":
                self.history.append({_key(i): json.loads(i.value_json) for i in rec.history.item})
            elif kind == "summary":
                for u in rec.summary.update:
                    self.summary[_key(u)] = json.loads(u.value_json)
            elif kind == "artifact":
                self.artifacts.append(rec.artifact)
            elif kind == "exit":
                self.exit_codes.append(rec.exit.exit_code)
        self.config.pop("_wandb", None)

    def table(self, key: str) -> dict:
        (path,) = (self.folder / "files" / "media" / "table").glob(f"{key}_*.table.json")
        return json.loads(path.read_text())


def offline_runs(out: Path) -> list[OfflineRun]:
    return [OfflineRun(p) for p in sorted((Path(out) / "wandb").glob("offline-run-*"))]


# ------------------------------------------------------------------ environment
ENV_UNSET = ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_ENTITY", "WANDB_PROJECT",
             "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_DIR", "WANDB_NOTES", "WANDB_TAGS")


def isolate(mp: pytest.MonkeyPatch, root: Path) -> None:
    """Point HOME and every wandb folder into ``root``, unset any API key or run setting,
    and send wandb to a closed local port: no test talks to a W&B server."""
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    mp.setenv("HOME", str(home))
    mp.setenv("NETRC", str(home / ".netrc"))
    mp.setenv("WANDB_CONFIG_DIR", str(home / "wandb-config"))
    mp.setenv("WANDB_DATA_DIR", str(home / "wandb-data"))
    mp.setenv("WANDB_CACHE_DIR", str(home / "wandb-cache"))
    mp.setenv("WANDB_ARTIFACT_DIR", str(home / "wandb-artifacts"))
    mp.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # closed port: nothing leaves
    mp.setenv("WANDB_MODE", "offline")
    mp.setenv("WANDB_SILENT", "true")
    for name in ENV_UNSET:
        mp.delenv(name, raising=False)
