"""Quality of llama.cpp's quantizations on the same tokens, against the same FP32 reference as ours.

For each text (the parity text, and any held-out text), the FP32 eager model of the bundle's source
checkpoint gives the reference logits once; our program and every llama.cpp file are then scored on
exactly those token ids (top-1 agreement, KL mean, perplexity ratio, cosine), llama.cpp's logits coming
from llama.cpp itself (llama-cpp-python on the library `llama-mobile peer build` made).
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import torch

from llama_mobile.core.bundle import Bundle
from llama_mobile.core.presets import GENERIC_MODEL, MODEL_PRESETS
from llama_mobile.core.reports import OURS, PEER, BenchQuality, QualityRow, QualityScore
from llama_mobile.core.tokenizer import Tokenizer
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.model import build_model, load_custom_ops
from llama_mobile.runtime_harness.gguf_peer import PeerType, source_checkpoint
from llama_mobile.runtime_harness.llama_cpp_build import llama_cpp_module
from llama_mobile.runtime_harness.metrics import compare_logits, pool_metrics
from llama_mobile.runtime_harness.parity import CORPUS, eval_token_ids, reference_logits, text_windows
from llama_mobile.runtime_harness.program import Program

Logits = Callable[[Path, list[int]], torch.Tensor]  # (artifact, token ids) -> [N, vocab] logits
PARITY_TEXT = "parity"


def llama_cpp_logits(gguf: Path, token_ids: list[int], threads: int = 2) -> torch.Tensor:
    """Logits at every position, from llama.cpp itself."""
    llama_cpp_module()  # this project's build, when there is one
    from llama_cpp import Llama

    llm = Llama(model_path=str(gguf), n_ctx=max(512, len(token_ids) + 8), n_threads=threads,
                n_threads_batch=threads, n_batch=len(token_ids), n_ubatch=len(token_ids), logits_all=True,
                verbose=False)
    try:
        llm.eval(token_ids)
        return torch.from_numpy(np.array(llm.scores[: len(token_ids)], dtype=np.float32))
    finally:
        llm.close()


def pooled_score(windows: list) -> QualityScore:
    m = pool_metrics(windows)
    return QualityScore(top1_agreement=m.top1_agreement, kl_mean=m.kl_mean, ppl_ratio=m.ppl_ratio,
                        cosine_mean=m.cosine_mean)


def text_name(path: Path | None) -> str:
    return PARITY_TEXT if path is None else path.stem


def quality_table(bundle: Bundle, peers: dict[PeerType | str, Path], texts: list[Path | None] = (None,),
                  positions: int = 256, size_bytes: int | None = None, imatrix_text: Path | None = None,
                  peer_logits: Logits | None = None, ours_logits: Logits | None = None, whole_text: bool = False,
                  emit: Callable[[str], None] = lambda line: None) -> BenchQuality:
    """Our program and each peer (a PeerType, or a label for a given file) against the FP32 eager model of
    the bundle's source, on the first `positions` tokens of every text (None: the parity text), or with
    ``whole_text`` on every window of `positions` tokens through it, pooled (a steadier perplexity ratio)."""
    peer_logits = peer_logits or llama_cpp_logits
    manifest = bundle.manifest
    preset = manifest.model.preset
    loaded = load_checkpoint(preset if preset in MODEL_PRESETS else GENERIC_MODEL, source_checkpoint(manifest))
    load_custom_ops()
    tokenizer = Tokenizer(bundle.tokenizer)
    context = bundle.context_length
    model = build_model(loaded.architecture, context, loaded.state_dict)
    del loaded
    if ours_logits is None:
        program = Program.of(bundle)
        ours_logits = lambda _, ids: program.logits_per_position(ids)  # noqa: E731
    rows = [QualityRow(OURS, OURS, size_bytes if size_bytes is not None else bundle_bytes(bundle), {})]
    for peer, path in peers.items():
        typed = isinstance(peer, PeerType)
        rows.append(QualityRow(f"{PEER} {peer.label if typed else peer}", PEER, path.stat().st_size, {},
                               gguf_type=peer.gguf_type if typed else None,
                               imatrix=peer.imatrix if typed else False, path=str(path)))
    names, counts, window_counts = {}, {}, {}
    bos, span = manifest.special_tokens.bos_id, min(positions, context)
    for text in texts:
        name = text_name(text)
        windows = text_windows(tokenizer, span, text, bos) if whole_text else \
            [eval_token_ids(tokenizer, span, text_path=text, bos_id=bos)]
        names[name], counts[name], window_counts[name] = str(text or CORPUS), sum(map(len, windows)), len(windows)
        emit(f"{name}: FP32 reference over {counts[name]} positions ({len(windows)} windows)")
        references = [reference_logits(model, ids) for ids in windows]
        for row in rows:
            emit(f"{name}: {row.artifact}")
            logits = (ours_logits(Path(bundle.path), ids) if row.side == OURS else peer_logits(Path(row.path), ids)
                      for ids in windows)
            row.scores[name] = pooled_score([compare_logits(reference, candidate, ids)
                                             for reference, candidate, ids in zip(references, logits, windows)])
    return BenchQuality(reference="fp32 eager", texts=names, positions=counts, windows=window_counts, rows=rows,
                        imatrix_text=str(imatrix_text) if imatrix_text and any(r.imatrix for r in rows) else None)


def bundle_bytes(bundle: Bundle) -> int:
    manifest = bundle.manifest
    names = [manifest.runtime.program] + ([manifest.runtime.weights] if manifest.runtime.weights else [])
    return sum(manifest.files[name].size for name in names)


def quality_against_peer(bundle: Bundle, gguf: Path, positions: int = 256) -> BenchQuality:
    """The bundle and one llama.cpp file against the FP32 reference on the parity text."""
    return quality_table(bundle, {gguf.stem: gguf}, [None], positions)


def _span(quality: BenchQuality, text: str) -> str:
    windows = quality.windows.get(text, 1)
    return f"{quality.positions[text]} pos" + (f" in {windows} windows" if windows > 1 else "")


def format_table(quality: BenchQuality) -> list[str]:
    """One line per artifact: bytes, then top-1 / KL mean / ppl ratio on each text."""
    texts = list(quality.texts)
    head = f"{'artifact':<28s} {'bytes':>12s}" + "".join(
        f"  {f'{t} ({_span(quality, t)}) top-1 / KL / ppl':>38s}" for t in texts)
    lines = [head]
    for row in quality.rows:
        cells = "".join(f"  {'':>14s}{s.top1_agreement:6.3f} / {s.kl_mean:6.3f} / {s.ppl_ratio:6.3f}"
                        for s in (row.scores[t] for t in texts))
        lines.append(f"{row.artifact:<28s} {row.size_bytes:>12,d}" + cells)
    return lines
