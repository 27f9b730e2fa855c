"""Core ML targets: a tiny Llama lowered whole to Core ML, its embedded model inspected, bad requests refused.

Compiling and running a Core ML model needs macOS; on other hosts the structure is checked and the
parity gate scores the quantized eager program ("host-simulated").
"""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.errors import UsageError
from llama_mobile.core.manifest import schema_problems
from llama_mobile.core.targets import TARGETS, get_target
from llama_mobile.jobs.export_job import run_export
from llama_mobile.jobs.export_request import ExportRequest, check_request
from tests.checkpoints import TINY

IS_MACOS = sys.platform == "darwin"


def export_coreml(checkpoint, out, target, recipe, **kwargs):
    options = {"context": 64, "positions": 48, **kwargs}
    return run_export(ExportRequest(model="llama", checkpoint=checkpoint, recipe=recipe, target=target,
                                    output_dir=out, **options))


@pytest.fixture(scope="module")
def ios18_int4(tmp_path_factory, tiny_hf):
    return export_coreml(tiny_hf, tmp_path_factory.mktemp("coreml"), "coreml-ios18", "coreml-int4",
                         formats=("mlpackage",))


@pytest.fixture(scope="module")
def ios17_8w(tmp_path_factory, tiny_hf):
    return export_coreml(tiny_hf, tmp_path_factory.mktemp("coreml"), "coreml-ios17", "coreml-8w", validate=False)


def read_spec(bundle: Path) -> dict:
    return json.loads((bundle / "coreml_report.json").read_text())["spec"]


def test_ios18_int4_is_one_core_ml_model_with_state_and_blockwise_weights(ios18_int4):
    report = json.loads((ios18_int4.bundle / "coreml_report.json").read_text())
    assert report["passed"] and all(report["checks"].values()), report["checks"]
    assert report["delegated_share"] == 1.0 and report["ops_outside_delegates"] == {}
    assert report["program"] == {"delegates": ["CoreMLBackend"], "kernels_outside_delegates": {}}
    spec = report["spec"]
    expected_states = {f"layers_{i}_attention_{kv}_cache" for i in range(TINY.n_layers) for kv in "kv"}
    assert {s["name"] for s in spec["states"]} == expected_states
    assert {s["dtype"] for s in spec["states"]} == {"FLOAT16"}
    assert spec["states"][0]["shape"] == [1, 64, TINY.n_kv_heads, TINY.head_dim]
    assert {i["name"] for i in spec["inputs"]} == {"tokens", "input_pos"}  # the cache is not an input
    # 7 linears per block and the output layer in int4 blocks; fp16 compute; Core ML's fused SDPA
    assert spec["ops"]["constexpr_blockwise_shift_scale"] >= 7 * TINY.n_layers + 1
    assert spec["ops"]["scaled_dot_product_attention"] == TINY.n_layers
    assert spec["ops"]["reduce_l2_norm"] == 2 * TINY.n_layers + 1  # fp16-safe RMSNorm, kept whole
    assert spec["tensor_dtypes"]["FLOAT16"] > 10 * spec["tensor_dtypes"].get("FLOAT32", 0)
    assert spec["outputs"][0]["shape"] == [1, TINY.vocab_size]


def test_ios18_bundle_manifest_and_standalone_mlpackage(ios18_int4):
    bundle = ios18_int4.bundle
    manifest = verify_bundle(bundle).manifest.to_dict()  # every file, inside model.mlpackage too, against its SHA-256
    assert schema_problems(manifest) == []
    assert {"model.pte", "tokenizer.json", "parity.json", "coreml_report.json"} <= set(manifest["files"])
    assert any(name.startswith("model.mlpackage/") and name.endswith("weight.bin") for name in manifest["files"])
    assert manifest["target"]["backend"] == "coreml" and manifest["target"]["min_os"] == "iOS 18"
    runtime = manifest["runtime"]
    assert runtime["metadata"]["enable_dynamic_shape"] is False and runtime["tokens_per_call"] == {"min": 1, "max": 1}
    assert runtime["coreml"]["stateful_kv_cache"] and runtime["coreml"]["mlpackage"] == "model.mlpackage"
    assert runtime["delegated_calls"] == 1
    # The standalone package is the very model the .pte carries.
    from llama_mobile.export.coreml_package import extract_mlpackage

    extracted = extract_mlpackage((bundle / "model.pte").read_bytes(), bundle.parent / "check.mlpackage")
    weights = sorted(extracted.rglob("weight.bin"))[0].relative_to(extracted)
    assert _sha(extracted / weights) == _sha(bundle / "model.mlpackage" / weights)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_ios18_parity_is_labelled_and_gated(ios18_int4):
    parity = ios18_int4.parity
    assert parity["method"] == ("coreml" if IS_MACOS else "host-simulated")
    assert parity["passed"] and parity["metrics"]["positions"] == 48
    # int4 weights move the logits: the figures are the quantized program's, not the float model's
    assert 0.5 < parity["metrics"]["cosine_mean"] < 0.9999
    assert json.loads((ios18_int4.bundle / "parity.json").read_text()) == parity
    assert json.loads((ios18_int4.bundle / "manifest.json").read_text())["parity"]["method"] == parity["method"]


def test_ios17_8w_passes_the_cache_in_and_out(ios17_8w):
    report = json.loads((ios17_8w.bundle / "coreml_report.json").read_text())
    assert report["passed"], report["checks"]
    spec = report["spec"]
    assert spec["states"] == [] and spec["specification_version"] < 9
    cache_inputs = [i for i in spec["inputs"] if i["name"] not in ("tokens", "input_pos")]
    assert len(cache_inputs) == 2 * TINY.n_layers and len(spec["outputs"]) == 2 * TINY.n_layers + 1
    assert spec["ops"].get("constexpr_affine_dequantize", 0) >= 7 * TINY.n_layers + 1
    assert "constexpr_blockwise_shift_scale" not in spec["ops"]  # an iOS 18 op
    # ExecuTorch writes the returned caches back: the only work outside Core ML
    assert report["program"]["kernels_outside_delegates"] == {"aten::copy_": 2 * TINY.n_layers}
    assert ios17_8w.parity is None and not (ios17_8w.bundle / "model.mlpackage").exists()


@pytest.mark.slow
@pytest.mark.parametrize("target,recipe", [("coreml-ios18", "coreml-fp16"), ("coreml-ios18", "coreml-8w"),
                                           ("coreml-ios17", "coreml-fp16"), ("coreml-ios18-cpu-ne", "coreml-int4"),
                                           ("coreml-ios18-cpu-gpu", "coreml-int4")])
def test_every_preset_and_recipe_lowers_whole(target, recipe, tiny_hf, tmp_path):
    result = export_coreml(tiny_hf, tmp_path, target, recipe)
    report = json.loads((result.bundle / "coreml_report.json").read_text())
    assert report["passed"], report["checks"]
    assert result.parity["passed"]
    assert result.manifest.to_dict()["runtime"]["coreml"]["compute_units"] == get_target(target).options.compute_units
    if recipe == "coreml-fp16":  # fp16 against the fp32 reference: nearly exact
        assert result.parity["metrics"]["cosine_mean"] > 0.999


def test_compute_units_and_state_reach_the_compile_specs():
    import coremltools as ct
    from executorch.backends.apple.coreml.compiler import CoreMLBackend

    from llama_mobile.export.backends import get_backend

    for name, units, ios in (("coreml-ios18-cpu-ne", ct.ComputeUnit.CPU_AND_NE, ct.target.iOS18),
                             ("coreml-ios18-cpu-gpu", ct.ComputeUnit.CPU_AND_GPU, ct.target.iOS18),
                             ("coreml-ios17", ct.ComputeUnit.ALL, ct.target.iOS17)):
        (partitioner,) = get_backend(get_target(name)).partitioners(get_target(name))
        specs = partitioner.delegation_spec.compile_specs
        assert CoreMLBackend.compute_unit_from_compile_specs(specs) == units
        assert CoreMLBackend.min_deployment_target_from_compile_specs(specs) == ios
        assert CoreMLBackend.model_compute_precision_from_compile_specs(specs) == ct.precision.FLOAT16
        assert partitioner.take_over_mutable_buffer == (ios == ct.target.iOS18)


def custom_recipe(tmp_path, dtype="fp16", scheme="4w", targets='["coreml"]') -> str:
    path = tmp_path / "mine.toml"
    path.write_text(f'name = "mine"\ndtype = "{dtype}"\ntargets = {targets}\n'
                    f'[linear]\nscheme = "{scheme}"\ngroup_size = 32\n')
    return str(path)


@pytest.mark.parametrize("target,recipe,text", [
    ("coreml-ios18", "8da4w", "recipe '8da4w' is for xnnpack.*, not coreml"),
    ("xnnpack", "coreml-int4", "recipe 'coreml-int4' is for coreml, not xnnpack"),
    ("coreml-ios17", "coreml-int4", "coreml-ios17 cannot run 4w"),
    ("coreml-ios18", "custom-8da4w", "coreml-ios18 cannot run 8da4w"),
    ("coreml-ios18", "custom-fp32", "computes in fp16, recipe 'mine' in fp32"),
])
def test_unsupported_combinations_are_refused_before_any_weight_loads(target, recipe, text, tmp_path):
    if recipe == "custom-8da4w":
        recipe = custom_recipe(tmp_path, scheme="8da4w")
    elif recipe == "custom-fp32":
        recipe = custom_recipe(tmp_path, dtype="fp32")
    # The checkpoint does not exist: a refusal from the check stage, not a failed load, proves the order.
    request = ExportRequest(model="llama", checkpoint=tmp_path / "no-such-checkpoint", recipe=recipe,
                            target=target, output_dir=tmp_path / "out")
    with pytest.raises(UsageError, match=text) as info:
        run_export(request)
    if target == "coreml-ios17":
        assert "--target coreml-ios18" in str(info.value)  # the target that can run it is named
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_mlpackage_format_needs_a_core_ml_target(tmp_path):
    request = ExportRequest(model="llama", checkpoint=tmp_path / "ckpt", recipe="8da4w", target="xnnpack",
                            output_dir=tmp_path, formats=("mlpackage",))
    with pytest.raises(UsageError, match="--format mlpackage needs a target that writes it"):
        check_request(request)


def test_targets_command_lists_the_core_ml_presets():
    result = subprocess.run([sys.executable, "-m", "llama_mobile.cli", "targets", "--json"], capture_output=True,
                            text=True, timeout=120, cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert {"coreml-ios17", "coreml-ios18", "coreml-ios18-cpu-ne", "coreml-ios18-cpu-gpu"} <= set(listed)
    assert listed["coreml-ios18"]["min_os"] == "iOS 18"
    assert listed["coreml-ios18"]["sdk_available"] is True  # coremltools is a dependency: lowering runs anywhere
    assert all(TARGETS[name].backend == "coreml" for name in listed if name.startswith("coreml"))


@pytest.mark.skipif(not IS_MACOS, reason="running a Core ML model needs macOS (coremltools predict); "
                                         "this host checks the structure and a host-simulated parity instead")
def test_core_ml_model_runs_and_matches_the_eager_program_on_macos(ios18_int4, tiny_hf):
    from llama_mobile.export.checkpoint import load_checkpoint
    from llama_mobile.export.model import build_model
    from llama_mobile.runtime_harness.coreml import coreml_logits_per_position
    from llama_mobile.runtime_harness.parity import reference_logits

    loaded = load_checkpoint("llama", tiny_hf)
    ids = [0, 5, 17, 42, 9, 100, 7]
    logits = coreml_logits_per_position(ios18_int4.bundle / "model.mlpackage", ids)
    reference = reference_logits(build_model(loaded.architecture, 64, loaded.state_dict, attention_kernel="sdpa"), ids)
    assert logits.shape == reference.shape
    assert (logits.argmax(-1) == reference.argmax(-1)).float().mean() > 0.5


@pytest.mark.skipif(IS_MACOS, reason="macOS runs Core ML programs")
def test_running_a_core_ml_bundle_off_macos_is_refused_in_one_line(ios18_int4):
    from llama_mobile.core.errors import RuntimeFailure
    from llama_mobile.runtime_harness.generate import Runner
    from llama_mobile.runtime_harness.program import Program

    bundle = ios18_int4.bundle
    with pytest.raises(RuntimeFailure, match="Core ML bundle"):
        Program.of(verify_bundle(bundle))
    with pytest.raises(RuntimeFailure, match="Core ML bundle"):
        Runner.of(verify_bundle(bundle))


def test_l2_rms_norm_matches_and_survives_fp16_outliers():
    import torch

    from llama_mobile.export.model import RMSNorm

    torch.manual_seed(0)
    norms = {kind: RMSNorm(576, 1e-5, kind) for kind in ("mean_square", "l2")}
    weight = 1 + 0.1 * torch.randn(576)
    for norm in norms.values():
        norm.weight.data = weight.clone()
    x = torch.randn(3, 576)
    torch.testing.assert_close(norms["l2"](x), norms["mean_square"](x), atol=1e-5, rtol=1e-5)
    x[:, 7] = 25000.0  # SmolLM2's residual stream holds outliers this large; x^2 overflows fp16
    exact = norms["l2"](x)
    for norm in norms.values():
        norm.half()
    assert not torch.allclose(norms["mean_square"](x.half()).float(), exact, atol=0.05)
    torch.testing.assert_close(norms["l2"](x.half()).float(), exact, atol=0.05, rtol=0.01)
