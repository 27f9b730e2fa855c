"""The embedded real SmolLM2-135M: 30 -> 22 blocks by block influence vs the naive last 8, each with a
short distillation. Perplexity on held-out alice.txt windows, as a ratio to the unpruned model."""
import json

import pytest

from llama_mobile.jobs.prune_job import PruneRequest, run_prune

SETTINGS = dict(model="smollm2-135m-instruct", checkpoint=None, drop_blocks=8, seq_len=64, calibration_windows=16,
                eval_windows=6, distill_steps=60, lr=1e-4, dtype="bf16")


@pytest.mark.slow
def test_importance_beats_naive_block_choice_before_and_after_distillation(tmp_path):
    reports = {}
    for choice in ("importance", "last"):
        result = run_prune(PruneRequest(output=tmp_path / choice, block_choice=choice, **SETTINGS))
        reports[choice] = result.report
        q = result.report["quality"]
        print(choice, json.dumps({"dropped": result.report["removed"]["blocks"]["dropped"],
                                  "unpruned_ppl": q["unpruned"]["perplexity"],
                                  "ratio_pruned": q["perplexity_ratio_pruned"],
                                  "ratio_distilled": q["perplexity_ratio_distilled"],
                                  "kl_pruned": q["pruned"]["kl_to_original"],
                                  "kl_distilled": q["distilled"]["kl_to_original"],
                                  "distillation": result.report["distillation"],
                                  "seconds": result.report["seconds"]}))
    smart, naive = reports["importance"]["quality"], reports["last"]["quality"]
    assert reports["importance"]["after"]["n_layers"] == 22
    assert smart["perplexity_ratio_pruned"] < naive["perplexity_ratio_pruned"]
    assert smart["perplexity_ratio_distilled"] < naive["perplexity_ratio_distilled"]
    for q in (smart, naive):
        assert q["distilled"]["kl_to_original"] < q["pruned"]["kl_to_original"]
        assert q["perplexity_ratio_distilled"] < q["perplexity_ratio_pruned"]
