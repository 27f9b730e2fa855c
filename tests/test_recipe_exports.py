"""Every shipped recipe exports a tiny model that runs, with every linear layer inside a delegate."""
import pytest
import torch

from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.targets import get_target
from llama_mobile.quantize.recipe import load_recipe, shipped_recipes
from llama_mobile.runtime_harness.program import Program
from tests.checkpoints import TINY_WIDE, random_state_dict, write_hf
from tests.conftest import export_tiny


@pytest.fixture(scope="module")
def wide_hf(tmp_path_factory):
    return write_hf(tmp_path_factory.mktemp("wide") / "hf", TINY_WIDE, random_state_dict(TINY_WIDE, seed=5))


# fp32 and 8da4w are exported by every other test module; these cover the remaining scheme kinds in the
# default suite, and the rest run with -m slow (each tiny export costs ~13 s of lowering).
DEFAULT_SUITE = {"8da8w", "4w"}  # fp16: test_half_precision_recipes_pass_their_gate_at_half_the_size


def xnnpack_recipes():
    names = [name for name in shipped_recipes() if "xnnpack" in load_recipe(name).targets]
    return [name if name in DEFAULT_SUITE else pytest.param(name, marks=pytest.mark.slow) for name in names]


@pytest.mark.parametrize("name", xnnpack_recipes())
def test_recipe_exports_and_runs(name, wide_hf, tmp_path):
    recipe = load_recipe(name)
    target = get_target("xnnpack")
    runnable = {recipe.linear.scheme, recipe.output.scheme} <= set(target.linear_schemes)
    if not runnable:
        from llama_mobile.core.errors import UsageError

        with pytest.raises(UsageError, match="cannot run"):
            export_tiny(wide_hf, tmp_path, name, validate=False)
        return
    result = export_tiny(wide_hf, tmp_path, name, validate=False)
    outside = result.manifest.to_dict()["runtime"]["ops_outside_delegates"]
    if recipe.dtype == "bf16":  # documented: XNNPACK in ExecuTorch 1.5 leaves bf16 matmuls outside
        assert any(op.startswith("mm") for op in outside), " ".join(sorted(outside))
    else:
        assert not any("linear" in op or op.startswith("mm") or "addmm" in op for op in outside), \
            " ".join(sorted(outside))
    logits = Program.of(verify_bundle(result.bundle)).forward(torch.tensor([[1, 2, 3, 4]]), 0)
    assert logits.shape == (1, TINY_WIDE.vocab_size) and torch.isfinite(logits).all()



@pytest.mark.parametrize("name", ["fp16", pytest.param("bf16", marks=pytest.mark.slow)])
def test_half_precision_recipes_pass_their_gate_at_half_the_size(name, wide_hf, tmp_path):
    result = export_tiny(wide_hf, tmp_path, name)  # the gate compares with the fp32 eager model
    assert result.parity["passed"], result.parity["failures"]
    fp32_weights = 4 * sum(v.numel() for v in random_state_dict(TINY_WIDE, seed=5).values())
    assert result.manifest.to_dict()["files"]["model.pte"]["size"] < 0.6 * fp32_weights
