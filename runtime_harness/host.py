"""What this host can run: Core ML programs only on macOS."""
from __future__ import annotations

import platform

from llama_mobile.core.bundle import Bundle
from llama_mobile.core.errors import RuntimeFailure

COREML_BACKEND = "coreml"


def on_macos() -> bool:
    return platform.system() == "Darwin"


def refuse_off_macos(bundle: Bundle, backend: str | None = None) -> None:
    """A Core ML bundle's (or variant's: ``backend``) program needs Apple's Core ML runtime; say so instead of
    a runtime error code."""
    if (backend or bundle.backend) == COREML_BACKEND and not on_macos():
        raise RuntimeFailure("this is a Core ML bundle: ExecuTorch runs its program only on macOS / iOS",
                             path=bundle.program, fix="run it on a Mac or in the iOS app; its parity was checked "
                                                      "at export (host-simulated, see parity.json)")
