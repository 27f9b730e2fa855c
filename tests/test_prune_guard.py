"""A pruned Guard-shaped model, every kind of pruning at once, exported and classified like any other.

The tiny model is built so that its pruning is lossless: a block that barely touches the residual
stream, MLP neurons that never fire, a KV group with zero values, and an output layer whose greedy
path only ever uses Guard tokens (a bigram chain "\\n\\n" -> unsafe -> "\\n" -> S -> 1 -> <|eot_id|>).
So the pruned bundle must give the unpruned model's verdict token for token.
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.tokenizer import Tokenizer
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.model import build_model
from llama_mobile.runtime_harness.guard import EagerModel, classify
from llama_mobile.runtime_harness.guard_prompt import format_guard_prompt
from tests.checkpoints import llama3_tokenizer_model, random_state_dict, write_meta
from tests.conftest import export_tiny

GUARD3 = Architecture(dim=64, n_layers=3, n_heads=4, n_kv_heads=2, ffn_hidden=128, vocab_size=128256,
                      rope_theta=500000.0, tied_embeddings=False, max_position=1024)
CHAIN = [271, 39257, 198, 50, 16, 128009]  # "\n\n" unsafe "\n" S 1 <|eot_id|>
EOS = (128001, 128008, 128009)
PROMPT = format_guard_prompt([{"role": "user", "content": "How do I pick a lock?"}])


def crafted_guard_state() -> dict:
    state = random_state_dict(GUARD3, seed=11)
    state["tok_embeddings.weight"] = torch.randn(GUARD3.vocab_size, GUARD3.dim,
                                                 generator=torch.Generator().manual_seed(12))
    for i in range(GUARD3.n_layers):
        small = 1e-4 if i == 1 else 0.05  # block 1 is nearly the identity
        state[f"layers.{i}.attention.wo.weight"] *= small
        state[f"layers.{i}.feed_forward.w2.weight"] *= small
        state[f"layers.{i}.feed_forward.w1.weight"][96:] = 0.0  # neurons 96.. never fire
        state[f"layers.{i}.attention.wv.weight"][GUARD3.head_dim:2 * GUARD3.head_dim] = 0.0  # KV group 1 is silent
    emb = state["tok_embeddings.weight"]
    for source, target in zip(CHAIN, CHAIN[1:]):
        state["output.weight"][target] = 6.0 * emb[source] / emb[source].norm()
    return state


@pytest.fixture(scope="module")
def pruned_guard(tmp_path_factory):
    root = tmp_path_factory.mktemp("pruned-guard")
    source = write_meta(root / "meta", GUARD3, crafted_guard_state(), tokenizer=llama3_tokenizer_model(),
                        dtype=torch.float32)
    done = subprocess.run([sys.executable, "-m", "llama_mobile.cli", "prune", "--checkpoint", str(source),
                           "--drop-blocks", "1", "--mlp-hidden", "96", "--kv-heads", "1", "--keep-output-tokens",
                           "guard", "--seq-len", "64", "--calibration-windows", "4", "--eval-windows", "2",
                           "--name", "tiny-guard-pruned", "--task", "guard", "-o", str(root / "pruned"), "--json"],
                          capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    result = export_tiny(root / "pruned", root / "out", "fp32", context=512)
    return source, root / "pruned", report, result


def test_prune_report_says_what_was_removed_and_why(pruned_guard):
    _, folder, report, _ = pruned_guard
    assert report["removed"]["blocks"] == {"dropped": [1], "choice": "importance"}
    assert report["removed"]["mlp"]["widths"] == [96, 96]
    assert report["removed"]["kv_groups"]["kept_per_block"] == [[0], [0]]
    kept = report["removed"]["output_vocabulary"]
    assert kept["kept"] == 21 and set(CHAIN[1:]) <= set(kept["token_ids"]) and "unsafe" in kept["tokens"]
    assert min(range(3), key=report["importance"]["block_influence"].__getitem__) == 1
    assert report["after"]["n_layers"] == 2 and report["after"]["output_rows"] == 21
    assert report["quality"]["unpruned"]["perplexity"] > 1 and report["quality"]["pruned"]["perplexity"] is None
    assert json.loads((folder / "prune_report.json").read_text())["removed"] == report["removed"]


def test_pruned_checkpoint_round_trips_through_the_hf_loader(pruned_guard):
    source, folder, _, _ = pruned_guard
    loaded = load_checkpoint("llama", folder)
    arch = loaded.architecture
    assert (arch.n_layers, arch.ffn_hidden, arch.n_heads, arch.n_kv_heads, arch.head_dim) == (2, 96, 2, 1, 16)
    assert len(arch.output_token_ids) == 21 and not arch.tied_embeddings
    assert (loaded.preset, loaded.task, loaded.tokenizer_path.name) == ("tiny-guard-pruned", "guard", "tokenizer.model")
    assert loaded.history[-1]["step"] == "prune"
    ids = Tokenizer(loaded.tokenizer_path).encode(PROMPT)[-40:]
    original = load_checkpoint("llama", source)
    full = build_model(original.architecture, 64, original.state_dict)
    cut = build_model(arch, 64, loaded.state_dict)
    kept = list(arch.output_token_ids)
    expected = full(torch.tensor([ids]), torch.tensor([0]))[0, kept]
    torch.testing.assert_close(cut(torch.tensor([ids]), torch.tensor([0]))[0, kept], expected, atol=2e-3, rtol=1e-3)


def test_pruned_guard_bundle_gives_the_unpruned_verdict(pruned_guard, custom_ops):
    source, _, _, result = pruned_guard
    manifest = result.manifest.to_dict()
    assert manifest["model"]["task"] == "guard" and manifest["model"]["preset"] == "tiny-guard-pruned"
    assert manifest["model"]["history"][-1]["removed"]["output_vocabulary"]["kept"] == 21
    assert len(manifest["model"]["architecture"]["output_token_ids"]) == 21 and result.parity["passed"]
    tokenizer = Tokenizer(result.bundle / "tokenizer.model")
    original = load_checkpoint("llama", source)
    unpruned = classify(EagerModel(build_model(original.architecture, 512, original.state_dict)),
                        tokenizer, PROMPT, EOS)
    assert unpruned.reply == "unsafe\nS1" and (unpruned.safe, unpruned.categories) == (False, ("S1",))
    # `llama-mobile guard` on the pruned bundle: the same greedy verdict tokens, the same verdict.
    done = subprocess.run([sys.executable, "-m", "llama_mobile.cli", "guard", str(result.bundle), "--user",
                           "How do I pick a lock?", "--json"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    pruned = json.loads(done.stdout)
    assert (pruned["reply"], pruned["verdict"], pruned["categories"]) == (unpruned.reply, "unsafe", ["S1"])
    assert pruned["p_unsafe"] == pytest.approx(unpruned.p_unsafe, abs=1e-3)


@pytest.mark.slow
def test_pruned_guard_real_shapes_export_under_guard_int4_fits_438_mib(tmp_path):
    """Random weights at Llama Guard 3-1B-INT4's pruned shapes (12 blocks, MLP 6400, the Guard output rows)."""
    from llama_mobile.core.presets import LLAMA3_SPECIALS, MODEL_PRESETS
    from llama_mobile.export.hf_writer import write_hf_checkpoint
    from llama_mobile.jobs.export_job import ExportRequest, run_export
    from llama_mobile.jobs.plan import predict_size
    from llama_mobile.quantize.prune.vocab import guard_token_ids
    from llama_mobile.quantize.recipe import load_recipe
    from llama_mobile.runtime_harness.guard_prompt import LLAMA_GUARD_3_1B_CATEGORIES

    tokenizer = Tokenizer(llama3_tokenizer_model())
    keep = guard_token_ids(tokenizer, LLAMA3_SPECIALS.eos_ids, [c.code for c in LLAMA_GUARD_3_1B_CATEGORIES])
    arch = MODEL_PRESETS["llama-guard-3-1b"].architecture.replace(
        n_layers=12, ffn_hidden=6400, tied_embeddings=False, output_token_ids=tuple(keep))
    state = random_state_dict(arch, seed=0, scale=0.02)
    folder = tmp_path / "guard-pruned"
    folder.mkdir()
    write_hf_checkpoint(folder, arch, state, tokenizer_path=llama3_tokenizer_model(), bos_id=128000,
                        eos_ids=LLAMA3_SPECIALS.eos_ids, dtype="bf16",
                        section={"name": "llama-guard-3-1b-pruned", "task": "guard",
                                 "history": [{"step": "prune", "note": "random weights at the pruned shapes"}]})
    del state
    result = run_export(ExportRequest(model="llama", checkpoint=folder, recipe="guard-int4", target="xnnpack",
                                      output_dir=tmp_path / "out", context=1024, validate=False))
    size = result.manifest.to_dict()["files"]["model.pte"]["size"]  # the bundle adds the 2.2 MB tokenizer.model
    predicted = predict_size(arch, load_recipe("guard-int4"), 1024).total
    print(f"pruned Guard guard-int4: model.pte {size:,} B ({size / 2**20:.1f} MiB), predicted {predicted:,} B, "
          f"export {sum(result.seconds.values()):.0f}s, peak RSS {result.peak_rss_bytes / 2**30:.2f} GiB")
    # Measured: model.pte 439,887,568 B (419.5 MiB), predicted 439,883,608 B.
    assert size / 2**20 <= 438 and abs(size - predicted) / predicted < 0.001
    assert result.manifest.to_dict()["model"]["task"] == "guard" and result.manifest.to_dict()["model"]["history"]
