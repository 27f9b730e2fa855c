"""Structured pruning on tiny models: identity, importance, each kind of pruning, distillation, errors."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from llama_mobile.core.architecture import Architecture
from llama_mobile.core.errors import UsageError
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.model import build_model
from llama_mobile.jobs.prune_job import PruneRequest, run_prune
from llama_mobile.quantize.prune import attention, blocks, mlp, vocab
from llama_mobile.quantize.prune.distill import DistillConfig, distill
from llama_mobile.quantize.prune.importance import measure_importance
from tests.checkpoints import TINY, random_state_dict

TINY3 = TINY.replace(n_layers=3)
WINDOWS = [[0, *range(5 + i, 5 + i + 23)] for i in range(0, 60, 20)]


def logits(arch: Architecture, state: dict, ids: list[int]) -> torch.Tensor:
    model = build_model(arch, 32, {k: v.float() for k, v in state.items()}, attention_kernel="sdpa")
    model.all_logits = True
    return model(torch.tensor([ids]), torch.tensor([0]))[0]


def sdpa_model(arch, state, context=32):
    model = build_model(arch, context, state, attention_kernel="sdpa")
    model.all_logits = True
    return model


def test_pruning_nothing_keeps_outputs_exactly(tiny_hf, tmp_path):
    result = run_prune(PruneRequest(model="llama", checkpoint=tiny_hf, output=tmp_path / "same", seq_len=32,
                                    calibration_windows=2, eval_windows=1))
    assert result.report["removed"] == {"nothing": True}
    before, after = load_checkpoint("llama", tiny_hf), load_checkpoint("llama", tmp_path / "same")
    assert after.architecture == before.architecture
    ids = [0, 11, 12, 13, 14, 15]
    assert torch.equal(logits(before.architecture, before.state_dict, ids),
                       logits(after.architecture, after.state_dict, ids))


def test_block_influence_ranks_a_near_identity_block_least_important():
    state = random_state_dict(TINY3, seed=3)
    for name in ("attention.wo.weight", "feed_forward.w2.weight"):
        state[f"layers.1.{name}"] *= 1e-4  # block 1 barely changes the residual stream
    importance = measure_importance(sdpa_model(TINY3, state), WINDOWS)
    assert min(range(3), key=importance.block.__getitem__) == 1 and importance.block[1] < 1e-4
    assert blocks.choose_blocks(3, count=1, influence=importance.block) == [1]
    assert blocks.choose_blocks(3, count=1, method="last") == [2]
    pruned, arch = blocks.drop_blocks(state, TINY3, [1])
    assert arch.n_layers == 2 and torch.equal(pruned["layers.1.attention.wq.weight"],
                                              state["layers.2.attention.wq.weight"])
    # Dropping a block that did (almost) nothing leaves the logits (almost) unchanged.
    torch.testing.assert_close(logits(arch, pruned, WINDOWS[0]), logits(TINY3, state, WINDOWS[0]),
                               atol=1e-3, rtol=1e-3)


def dead_parts_state(arch: Architecture, seed: int = 5) -> dict:
    """MLP neurons 96.. of every block never fire, KV group 1 carries no values: pruning them is lossless."""
    state = random_state_dict(arch, seed=seed)
    kv_rows = slice(arch.head_dim, 2 * arch.head_dim)
    for i in range(arch.n_layers):
        state[f"layers.{i}.feed_forward.w1.weight"][96:] = 0.0
        state[f"layers.{i}.attention.wv.weight"][kv_rows] = 0.0
    return state


def test_mlp_and_kv_group_pruning_find_and_remove_dead_parts_losslessly():
    state = dead_parts_state(TINY)
    importance = measure_importance(sdpa_model(TINY, state), WINDOWS)
    assert all(float(m[96:].max()) == 0.0 < float(m[:96].min()) for m in importance.mlp)
    assert all(float(k[1]) == 0.0 < float(k[0]) for k in importance.kv_groups)
    keep = mlp.choose_neurons(importance.mlp, mlp.target_widths(TINY, [96]))
    pruned, arch = mlp.prune_mlp(state, TINY, keep)
    groups = attention.choose_groups(arch, 1, importance.kv_groups)
    pruned, arch = attention.prune_kv_groups(pruned, arch, groups)
    assert (arch.ffn_hidden, arch.n_heads, arch.n_kv_heads, arch.head_dim) == (96, 2, 1, 16)
    assert arch.attn_head_dim == 16 and arch.param_count() < TINY.param_count()
    torch.testing.assert_close(logits(arch, pruned, WINDOWS[1]), logits(TINY, state, WINDOWS[1]),
                               atol=1e-5, rtol=1e-5)
    # Per-layer widths: one per block, recorded as layer_ffn_hidden.
    _, uneven = mlp.prune_mlp(state, TINY, mlp.choose_neurons(importance.mlp, mlp.target_widths(TINY, [96, 64])))
    assert uneven.layer_ffn_hidden == (96, 64) and uneven.check()


def test_pruned_output_logits_map_back_to_the_original_ids():
    state = random_state_dict(TINY, seed=1)
    keep = [1, 2, 7, 40, 299]
    pruned, arch = vocab.prune_output(state, TINY, keep)
    assert pruned["output.weight"].shape == (5, TINY.dim) and arch.output_token_ids == tuple(keep)
    full, cut = logits(TINY, state, WINDOWS[0]), logits(arch, pruned, WINDOWS[0])
    torch.testing.assert_close(cut[:, keep], full[:, keep], atol=1e-5, rtol=1e-5)
    others = torch.ones(TINY.vocab_size, dtype=torch.bool)
    others[keep] = False
    assert bool((cut[:, others] <= -1e4).all())
    assert torch.equal(cut.argmax(-1), torch.tensor(keep)[full[:, keep].argmax(-1)])
    # A tied model is untied: the embedding keeps every row.
    tied = TINY.replace(tied_embeddings=True)
    tied_state = {k: v for k, v in state.items() if k != "output.weight"}
    untied_state, untied = vocab.prune_output(tied_state, tied, keep)
    assert not untied.tied_embeddings and torch.equal(untied_state["output.weight"],
                                                      tied_state["tok_embeddings.weight"][keep])
    # Pruning again keeps a subset of what is left, by original id.
    again_state, again = vocab.prune_output(pruned, arch, [2, 299])
    assert again.output_token_ids == (2, 299) and torch.equal(again_state["output.weight"],
                                                              state["output.weight"][[2, 299]])


def test_distillation_lowers_the_kl_and_resumes_where_it_stopped(tmp_path):
    state = random_state_dict(TINY3, seed=2)
    teacher = sdpa_model(TINY3, state)
    small_state, small = blocks.drop_blocks(state, TINY3, [0])

    def student():
        return sdpa_model(small, {k: v.clone() for k, v in small_state.items()})

    train, held = WINDOWS[:2], WINDOWS[2:]
    straight = student()
    done = distill(straight, teacher, train, held, DistillConfig(steps=8, lr=3e-3))
    assert done.kl_after < 0.9 * done.kl_before and done.resumed_from == 0 and len(done.losses) == 8

    config = DistillConfig(steps=4, lr=3e-3, save_every=2, state_dir=tmp_path, fingerprint="run-a")
    first = distill(student(), teacher, train, held, config)
    assert first.steps == 4 and (tmp_path / "distill-state.pt").exists()
    config.steps = 8  # the run is interrupted after 4 steps and started again with the same state folder
    resumed_model = student()
    resumed = distill(resumed_model, teacher, train, held, config)
    assert resumed.resumed_from == 4 and resumed.losses == pytest.approx(done.losses, rel=1e-4)
    for (name, a), b in zip(straight.named_parameters(), resumed_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    # A state saved for another run is not taken.
    other = distill(student(), teacher, train, held, DistillConfig(steps=1, lr=3e-3, state_dir=tmp_path,
                                                                   fingerprint="run-b"))
    assert other.resumed_from == 0


def test_an_interrupted_prune_resumes_its_distillation(tiny_hf, tmp_path):
    from llama_mobile.core.progress import Progress
    from llama_mobile.jobs.prune_job import STAGES

    def stop_after_first_step(line):
        if "step 1/3" in line:
            raise KeyboardInterrupt

    request = PruneRequest(model="llama", checkpoint=tiny_hf, output=tmp_path / "small", drop_blocks=1, seq_len=32,
                           calibration_windows=2, eval_windows=1, distill_steps=3, save_every=1, lr=1e-3)
    with pytest.raises(KeyboardInterrupt):
        run_prune(request, Progress(STAGES, emit=stop_after_first_step))
    state = tmp_path / ".small.distill-state"
    assert (state / "distill-state.pt").exists() and not (tmp_path / "small").exists()
    report = run_prune(request).report
    assert report["distillation"]["resumed_from_step"] == 1 and report["distillation"]["steps"] == 3
    assert report["step"] == "prune" and report["removed"]["blocks"]["dropped"] in ([0], [1])
    assert not state.exists() and (tmp_path / "small" / "model.safetensors").exists()


def test_bad_inputs_fail_with_one_line_errors(tiny_hf, tmp_path):
    with pytest.raises(UsageError, match="leaves none"):
        blocks.choose_blocks(2, count=2, influence=[0.1, 0.2])
    with pytest.raises(UsageError, match="outside 0..1"):
        blocks.choose_blocks(2, at=[2])
    with pytest.raises(UsageError, match="larger than block 0's current 128"):
        mlp.target_widths(TINY, [256])
    with pytest.raises(UsageError, match="outside 1..2"):
        attention.choose_groups(TINY, 3, [])
    with pytest.raises(UsageError, match="already pruned"):
        vocab.prune_output(*vocab.prune_output(random_state_dict(TINY), TINY, [1, 2]), [3])
    base = dict(model="llama", checkpoint=tiny_hf, seq_len=32, calibration_windows=2, eval_windows=1)
    with pytest.raises(UsageError, match="not a single token"):
        run_prune(PruneRequest(output=tmp_path / "a", keep_output_tokens="zzqqzzqqxx", **base))
    assert not (tmp_path / "a").exists()
    cli = subprocess.run([sys.executable, "-m", "llama_mobile.cli", "prune", "--checkpoint", str(tiny_hf),
                          "--drop-blocks", "2", "--seq-len", "32", "-o", str(tmp_path / "b")],
                         capture_output=True, text=True, timeout=300, cwd=Path(__file__).parent.parent)
    assert cli.returncode == 2
    lines = cli.stderr.strip().splitlines()
    assert [l for l in lines if l.startswith("error:")] == lines[-1:]
    assert "dropping 2 of 2 blocks leaves none" in lines[-1] and "fix:" in lines[-1]
    assert "calibrate" not in cli.stderr and not (tmp_path / "b").exists()  # refused before any calibration
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a checkpoint")
    with pytest.raises(UsageError, match="not a pruned checkpoint"):  # -o is replaced whole: never a user's folder
        run_prune(PruneRequest(output=tmp_path / "mine", **base))
    with pytest.raises(UsageError, match="source checkpoint"):
        run_prune(PruneRequest(output=tiny_hf, **base))


def test_prune_help_has_an_example():
    done = subprocess.run([sys.executable, "-m", "llama_mobile.cli", "prune", "--help"], capture_output=True,
                          text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert done.returncode == 0 and "Example" in done.stdout and "--keep-output-tokens" in done.stdout


def test_export_takes_a_checkpoint_folder_as_model(tmp_path):
    both = subprocess.run([sys.executable, "-m", "llama_mobile.cli", "export", "--model", str(tmp_path),
                           "--checkpoint", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert both.returncode == 2 and "pass the folder once" in both.stderr
    neither = subprocess.run([sys.executable, "-m", "llama_mobile.cli", "export", "--model", str(tmp_path / "no")],
                             capture_output=True, text=True, timeout=120)
    assert neither.returncode == 2 and "is not one of" in neither.stderr


def test_pruned_guard_shapes_fit_meta_size_under_guard_int4():
    """Llama Guard 3-1B-INT4's shapes: 12 blocks, MLP 6400, output cut to the Guard tokens."""
    from llama_mobile.core.presets import MODEL_PRESETS
    from llama_mobile.jobs.plan import predict_size
    from llama_mobile.quantize.recipe import load_recipe

    guard = MODEL_PRESETS["llama-guard-3-1b"].architecture
    pruned = guard.replace(n_layers=12, ffn_hidden=6400, tied_embeddings=False,
                           output_token_ids=tuple(range(21)))  # 21: what `guard` keeps with Llama 3's tokenizer
    size = predict_size(pruned, load_recipe("guard-int4"), 1024)
    assert size.total / 2**20 <= 438
    assert size.of("output") < 25_000  # 21 rows x 2048 at 4 bits + bf16 group scales
    unpruned = predict_size(guard, load_recipe("guard-int4"), 1024).total
    assert size.total < 0.6 * unpruned
