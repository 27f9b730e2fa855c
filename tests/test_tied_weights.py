"""A tied embedding/output matrix is stored once: one int8 (or fp32) copy serves the lookup and the matmul."""
import dataclasses

import pytest
import torch

from llama_mobile.core.bundle import verify_bundle
from llama_mobile.jobs.plan import predict_size
from llama_mobile.quantize.recipe import load_recipe
from tests.checkpoints import TINY, random_state_dict, write_hf
from tests.conftest import export_tiny

# Big enough vocabulary that the duplicated matrix would dominate the file.
TIED = dataclasses.replace(TINY, dim=128, ffn_hidden=256, vocab_size=300, tied_embeddings=True)


@pytest.fixture(scope="module")
def tied_hf(tmp_path_factory):
    return write_hf(tmp_path_factory.mktemp("tied") / "hf", TIED, random_state_dict(TIED, seed=5))


@pytest.fixture(scope="module")
def tied_bundle(tied_hf, tmp_path_factory):
    return export_tiny(tied_hf, tmp_path_factory.mktemp("out"), "8da4w-mixed")


def test_recipes_say_when_tied_weights_can_be_shared():
    assert load_recipe("8da4w-mixed").shares_tied_weights()
    assert load_recipe("llama3.2-quantized").shares_tied_weights()
    assert load_recipe("fp32").shares_tied_weights()
    assert not load_recipe("8da4w").shares_tied_weights()  # 8-bit lookup, 4-bit matmul: different bytes


def test_shared_quantization_uses_one_tensor_for_lookup_and_matmul(custom_ops):
    from llama_mobile.export.model import build_model
    from llama_mobile.quantize.apply import quantize_model

    model = build_model(TIED, 32, random_state_dict(TIED, seed=5))
    configs = quantize_model(model, load_recipe("8da4w-mixed"), tied=True)
    assert model.tok_embeddings.weight is model.output.weight
    assert configs["embedding:tok_embeddings"] == {"shared_with": "output"}
    # The lookup dequantizes exactly the rows the output layer multiplies with.
    rows = model.tok_embeddings(torch.tensor([[3, 7]]))[0]
    torch.testing.assert_close(rows, model.output.weight.dequantize()[[3, 7]])


def test_tied_bundle_stores_the_matrix_once_and_runs(tied_bundle):
    manifest = tied_bundle.manifest.to_dict()
    assert manifest["runtime"]["weights"] == "model.ptd"
    stored = manifest["files"]["model.pte"]["size"] + manifest["files"]["model.ptd"]["size"]
    predicted = predict_size(TIED, load_recipe("8da4w-mixed"), 64).total
    matrix = TIED.vocab_size * TIED.dim  # int8 bytes of one copy
    assert abs(stored - predicted) < matrix / 2, (stored, predicted)
    assert tied_bundle.parity["passed"], tied_bundle.parity


def test_runner_and_program_load_the_external_weights(tied_bundle):
    from llama_mobile.runtime_harness.generate import Runner
    from llama_mobile.runtime_harness.program import Program

    bundle = tied_bundle.bundle
    logits = Program.of(verify_bundle(bundle)).forward(torch.tensor([[1, 2, 3]]), 0)
    assert logits.shape[-1] == TIED.vocab_size and torch.isfinite(logits).all()
    result = Runner.of(verify_bundle(bundle)).generate("hello", max_new_tokens=4)
    assert result.stats.generated_tokens >= 1


def test_single_file_keeps_everything_in_the_program(tied_hf, tmp_path):
    single = export_tiny(tied_hf, tmp_path, "8da4w-mixed", single_file=True, validate=False)
    assert single.manifest.to_dict()["runtime"]["weights"] is None and "model.ptd" not in single.manifest.to_dict()["files"]
    from llama_mobile.runtime_harness.program import Program

    logits = Program.of(verify_bundle(single.bundle)).forward(torch.tensor([[1, 2, 3]]), 0)
    assert torch.isfinite(logits).all()


def test_verify_refuses_weights_the_files_do_not_list(tied_bundle, tmp_path):
    import json
    import shutil

    from llama_mobile.core.errors import BundleError
    from llama_mobile.core.bundle import verify_bundle

    copy = tmp_path / "copy"
    shutil.copytree(tied_bundle.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]["model.ptd"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="runtime.weights names model.ptd"):
        verify_bundle(copy)
