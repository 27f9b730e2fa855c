"""SHA-256 of a file, read in blocks: the one digest the manifest, the loaders and the prune report use."""
from __future__ import annotations

import hashlib
from pathlib import Path

BLOCK = 1 << 22


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
