"""What this host can run: Core ML programs only on macOS."""
from __future__ import annotations

import json
import platform
from pathlib import Path

from llama_mobile.core.errors import RuntimeFailure


def on_macos() -> bool:
    return platform.system() == "Darwin"


def refuse_off_macos(program: Path) -> None:
    """A Core ML bundle's program needs Apple's Core ML runtime; say so instead of a runtime error code."""
    manifest = Path(program).parent / "manifest.json"
    try:
        backend = json.loads(manifest.read_text())["target"]["backend"]
    except (OSError, ValueError, KeyError, TypeError):
        return
    if backend == "coreml" and not on_macos():
        raise RuntimeFailure("this is a Core ML bundle: ExecuTorch runs its program only on macOS / iOS",
                             path=program, fix="run it on a Mac or in the iOS app; its parity was checked at export "
                                               "(host-simulated, see parity.json)")
