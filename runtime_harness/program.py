"""A .pte loaded with ExecuTorch's runtime (the same kernels the phone runs), stepped from Python."""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from llama_mobile.core.errors import RuntimeFailure
from llama_mobile.export.bundle import weights_path
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

    def __init__(self, path: Path):

        refuse_off_macos(path)
        load_runtime_ops()
        from executorch.extension.pybindings.portable_lib import _load_for_executorch


        self.path = Path(path)
        weights = weights_path(self.path)
        try:
            self.module = _load_for_executorch(str(self.path), str(weights) if weights else None)
        except (RuntimeError, ValueError) as exc:
            raise RuntimeFailure(f"the ExecuTorch runtime cannot load the program ({exc})", path=path,
                                 fix="re-export it with this llama-mobile version") from None
        self.max_seq_len = self._constant("get_max_seq_len")
        self.context_len = self._constant("get_max_context_len")

    def _constant(self, name: str) -> int:
        return int(self.module.run_method(name, ())[0])

    def forward(self, tokens: torch.Tensor, start_pos: int) -> torch.Tensor:
        if start_pos + tokens.shape[1] > self.context_len:
            raise RuntimeFailure(f"{start_pos + tokens.shape[1]} tokens exceed the context of "
                                 f"{self.context_len}", path=self.path, fix="use a shorter prompt or text")
        out = self.module.forward((tokens.to(torch.long), torch.tensor([start_pos], dtype=torch.long)))
        return out[0]

    def logits_per_position(self, token_ids: list[int]) -> torch.Tensor:
        """Teacher-forced logits at every position, one decode step per token.

        The shipped program returns the last position only (what a phone needs); stepping one
        token at a time is exactly the decode path, so this costs nothing in the artifact.
        """
        rows = [self.forward(torch.tensor([[tok]]), pos)[0] for pos, tok in enumerate(token_ids)]
        return torch.stack(rows).float()
