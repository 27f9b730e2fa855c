"""Backends are plug-ins: a toy one registers in a few lines and the export job runs through it unchanged."""
import json

import torch

from llama_mobile.core import targets
from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.targets import Target
from llama_mobile.export.backends import get_backend
from llama_mobile.export.backends.base import BACKENDS, Backend, register
from llama_mobile.runtime_harness.program import Program


class ToyBackend(Backend):
    """Delegates nothing: every op runs in ExecuTorch's portable kernels."""

    name = "toy"
    runner_metadata = {"enable_dynamic_shape": False}
    partitioned = 0

    def partitioners(self, target):
        ToyBackend.partitioned += 1
        return []


def test_a_toy_backend_exports_through_the_job(tmp_path, tiny_hf, monkeypatch):
    monkeypatch.setitem(BACKENDS, "toy", None)
    register(ToyBackend())
    monkeypatch.setitem(targets.TARGETS, "toy", Target(name="toy", backend="toy", summary="toy",
                                                       linear_schemes=("fp32",), embedding_schemes=("fp32",)))
    recipe = tmp_path / "toy.toml"
    recipe.write_text('name = "toy-fp32"\nversion = 1\nsummary = "fp32 for the toy backend"\ndtype = "fp32"\n'
                      'targets = ["toy"]\n[linear]\nscheme = "fp32"\n[embedding]\nscheme = "fp32"\n'
                      "[thresholds]\nmin_top1 = 0.99\nmax_kl_mean = 0.0001\n")
    from llama_mobile.jobs.export_job import ExportRequest, run_export

    result = run_export(ExportRequest(model="llama", checkpoint=tiny_hf, recipe=str(recipe), target="toy",
                                      output_dir=tmp_path / "out", context=64, positions=16))
    assert ToyBackend.partitioned == 1 and isinstance(get_backend(targets.TARGETS["toy"]), ToyBackend)
    bundle = verify_bundle(result.bundle)
    assert bundle.backend == "toy" and bundle.weights is None  # no external weights unless the backend says so
    assert result.parity["passed"] and result.manifest.runtime.delegated_calls == 0
    assert result.manifest.runtime.metadata["enable_dynamic_shape"] is False  # the backend's runner metadata
    assert json.loads((result.bundle / "manifest.json").read_text())["target"]["backend"] == "toy"
    logits = Program.of(bundle).forward(torch.tensor([[1]]), 0)
    assert logits.shape[-1] == bundle.manifest.model.architecture["vocab_size"]
