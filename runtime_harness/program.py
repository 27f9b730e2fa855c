"""A .pte loaded with ExecuTorch's runtime (the same kernels the phone runs), stepped from Python."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from llama_mobile.core.bundle import Bundle
from llama_mobile.core.errors import RuntimeFailure
from llama_mobile.core.manifest import AttentionSink
from llama_mobile.runtime_harness.host import refuse_off_macos


def load_runtime_ops() -> None:
    """Kernels a program may call outside its delegates: the LLM custom ops and quantized embeddings."""
    import executorch.kernels.quantized  # noqa: F401
    from executorch.extension.llm.custom_ops import custom_ops  # noqa: F401


@contextlib.contextmanager
def quiet_native_stderr():
    """ExecuTorch's C++ logs go to fd 2; keep them off the user's terminal unless something fails."""
    saved = os.dup(2)
    with open(os.devnull, "wb") as devnull:
        os.dup2(devnull.fileno(), 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


class Program:
    """forward(tokens, input_pos) of an LLM .pte; the KV cache lives inside the program."""

    def __init__(self, path: Path, weights: Path | None = None, *, trusted: bool = False,
                 attention_sink: AttentionSink | None = None):
        """trusted: a program this process just wrote (the export's parity gate); any other is first
        loaded in a child process (check_loads). attention_sink: the manifest's runtime.attention_sink; such a
        program takes any position (its cache is a ring), so context_len bounds one call, not the sequence."""
        self.attention_sink = attention_sink
        if not trusted:
            check_loads(path, weights)
        load_runtime_ops()
        from executorch.extension.pybindings.portable_lib import _load_for_executorch


        self.path = Path(path)
        try:
            self.module = _load_for_executorch(str(self.path), str(weights) if weights else None)
        except (RuntimeError, ValueError) as exc:
            raise RuntimeFailure(f"the ExecuTorch runtime cannot load the program ({exc})", path=path,
                                 fix="re-export it with this llama-mobile version") from None
        self.max_seq_len = self._constant("get_max_seq_len")
        self.context_len = self._constant("get_max_context_len")

    @classmethod
    def of(cls, bundle: Bundle, adapter: str | None = None, variant: str | None = None) -> Program:
        """The bundle's program, LoRA adapter ``adapter``'s (over the bundle's weights file), or the program and
        weights of the variant for target ``variant`` (export --targets)."""
        if variant is not None:
            program, weights = bundle.variant_files(variant)
            refuse_off_macos(bundle, bundle.manifest.variant(variant)["backend"])
            return cls(program, weights, attention_sink=bundle.manifest.runtime.attention_sink)
        refuse_off_macos(bundle)
        program = bundle.program if adapter is None else bundle.adapter_program(adapter)
        return cls(program, bundle.weights, attention_sink=bundle.manifest.runtime.attention_sink)

    def _constant(self, name: str) -> int:
        try:
            return int(self.module.run_method(name, ())[0])
        except (RuntimeError, ValueError, IndexError) as exc:
            raise RuntimeFailure(f"the program's {name} cannot run ({exc})", path=self.path,
                                 fix="re-export it with this llama-mobile version") from None

    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        if start_pos + tokens.shape[1] > self.context_len and self.attention_sink is None:
            raise RuntimeFailure(f"{start_pos + tokens.shape[1]} tokens exceed the context of "
                                 f"{self.context_len}", path=self.path, fix="use a shorter prompt or text")
        try:
            out = self.module.forward((tokens.to(torch.long), torch.tensor([start_pos], dtype=torch.long)))
        except RuntimeError as exc:
            raise RuntimeFailure(f"the program failed to run ({exc})", path=self.path,
                                 fix="re-export it with this llama-mobile version") from None
        return out[0]

    def logits_per_position(self, token_ids: list[int]) -> torch.Tensor:
        """Teacher-forced logits at every position, one decode step per token.

        The shipped program returns the last position only (what a phone needs); stepping one
        token at a time is exactly the decode path, so this costs nothing in the artifact.
        """
        rows = [self.forward(torch.tensor([[tok]]), pos)[0] for pos, tok in enumerate(token_ids)]
        return torch.stack(rows).float()


# A damaged program whose manifest hashes were rewritten to match passes verify_bundle, and ExecuTorch's
# loader trusts the offsets inside it: it can crash the process (SIGSEGV) instead of returning an
# error. Each program is therefore first loaded and stepped once in a child process.
PROBE_TIMEOUT_S = 600
_probed: set[tuple] = set()


def check_loads(path: Path, weights: Path | None = None) -> None:
    """Load the program, run its constant methods and one forward step in a child process; a crash
    or an error there is a RuntimeFailure here. Once per file version per process."""
    key = tuple(_identity(p) for p in (path, weights) if p is not None)
    if key in _probed:
        return
    command = [sys.executable, "-m", __spec__.name, str(path), *([str(weights)] if weights else [])]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeFailure(f"loading the program did not finish in {PROBE_TIMEOUT_S} s", path=path,
                             fix="re-export the bundle; it may be damaged") from None
    if done.returncode < 0:
        crash = signal.Signals(-done.returncode).name
        raise RuntimeFailure(f"the program crashed the ExecuTorch runtime ({crash}): it is damaged", path=path,
                             fix="re-export the bundle")
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        if lines:  # the child's one line already names the file and the fix
            raise RuntimeFailure(lines[-1].removeprefix("error: "))
        raise RuntimeFailure(f"loading the program failed (exit code {done.returncode})", path=path,
                             fix="re-export the bundle")
    _probed.add(key)


def _identity(path: Path) -> tuple:
    info = os.stat(path)
    return str(Path(path).resolve()), info.st_ino, info.st_size, info.st_mtime_ns


def _probe(path: str, weights: str | None = None) -> None:
    """The child's side of check_loads."""
    program = Program(Path(path), Path(weights) if weights else None, trusted=True)
    module = program.module
    for name in module.method_names():
        if name != "forward" and module.method_meta(name).num_inputs() == 0:
            program._constant(name)
    program.forward(torch.tensor([[0]]), 0)


if __name__ == "__main__":
    try:
        with quiet_native_stderr():
            _probe(*sys.argv[1:3])
    except RuntimeFailure as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
