import dataclasses

import pytest
from click.testing import CliRunner

from llama_mobile.cli import main
from llama_mobile.core.devices import DEVICES, get_device
from llama_mobile.core.errors import ConfigError, ExportError, UsageError
from llama_mobile.core.targets import TARGETS, get_target
from llama_mobile.export.backends import bind_device, qnn, sdk_problem
from llama_mobile.jobs.export_request import ExportRequest, check_request
from llama_mobile.quantize.pt2e import (
    neuropilot_quant_settings,
    qnn_quant_settings,
    quant_settings,
)
from llama_mobile.quantize.recipe import (
    Pt2eQuant,
    check_recipe_fits,
    load_recipe,
    parse_recipe,
)

NPU_CHOICE = {"snapdragon-8-gen-3": ("qnn-htp", "SM8650"), "snapdragon-8-elite": ("qnn-htp", "SM8750"),
              "dimensity-9300": ("neuropilot", "mt6989"), "dimensity-9400": ("neuropilot", "mt6991")}


@pytest.fixture
def no_qnn_sdk(monkeypatch):
    monkeypatch.delenv("QNN_SDK_ROOT", raising=False)


@pytest.mark.parametrize("name", list(DEVICES))
def test_device_records_its_npu_target_and_why_xnnpack_stays(name):
    device = DEVICES[name]
    assert device.target == "xnnpack"  # runs without any SDK
    npu_target, chip = NPU_CHOICE.get(name, (None, None))
    assert (device.npu.target if device.npu else None, device.npu.chip if device.npu else None) == (npu_target,
                                                                                                    chip)
    if npu_target:
        assert TARGETS[npu_target].backend == device.npu.backend
        assert f"--target {npu_target} ({chip})" in device.target_reason
    elif device.vendor != "Apple":
        assert "NPU option: none" in device.target_reason
    assert "KleidiAI" in device.target_reason


@pytest.mark.parametrize("name", list(DEVICES))
def test_xnnpack_scheme_follows_i8mm(name):
    device = DEVICES[name]
    recipe = load_recipe(device.recipe)
    assert recipe.linear.scheme == "8da4w" and recipe.linear.group_size == 32
    # group 32 is KleidiAI's i8mm layout; without i8mm the reason says which kernels carry it
    assert ("i8mm" in device.recipe_reason) == ("i8mm" in device.isa or "no i8mm" in device.recipe_reason)
    if "i8mm" not in device.isa:
        assert "dotprod" in device.recipe_reason


def test_targets_json_reports_backend_experimental_and_sdk(no_qnn_sdk):
    import json

    result = CliRunner().invoke(main, ["targets", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["xnnpack"]["sdk_available"] is True and data["xnnpack"]["experimental"] is False
    assert data["qnn-htp"]["backend"] == "qnn" and data["qnn-htp"]["sdk_available"] is False
    assert "QNN_SDK_ROOT" in data["qnn-htp"]["sdk_problem"]
    assert data["neuropilot"]["sdk_available"] is False and "mtk_converter" in data["neuropilot"]["sdk_problem"]
    assert data["vulkan"]["experimental"] is True
    listing = CliRunner().invoke(main, ["targets"]).stdout
    assert "[experimental]" in next(line for line in listing.splitlines() if line.startswith("vulkan"))


def _export(args, env=None):
    return CliRunner().invoke(main, ["export", *args], env=env)


def _one_error_line(result, capfd) -> str:
    stderr = result.stderr + capfd.readouterr().err  # the CLI's progress stream may bypass the runner
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    return errors[0]


def test_qnn_without_sdk_is_a_one_line_refusal(no_qnn_sdk, tmp_path, capfd):
    result = _export(["--device", "snapdragon-8-gen-3", "--target", "qnn-htp", "-o", str(tmp_path)])
    assert result.exit_code == ExportError.exit_code
    line = _one_error_line(result, capfd)
    assert "QNN_SDK_ROOT is not set" in line and "QAIRT" in line and "LD_LIBRARY_PATH" in line
    assert not any(tmp_path.iterdir())


def test_qnn_with_an_empty_sdk_folder_is_refused_before_executorch_touches_it(tmp_path, capfd):
    empty = tmp_path / "qairt"
    empty.mkdir()
    result = _export(["--device", "snapdragon-8-elite", "--target", "qnn-htp", "-o", str(tmp_path / "out")],
                     env={"QNN_SDK_ROOT": str(empty)})
    assert result.exit_code == ExportError.exit_code  # a refusal, not a process abort
    assert "lacks lib/x86_64-linux-clang/libQnnHtp.so" in _one_error_line(result, capfd)


def test_qnn_sdk_check_wants_the_libraries_on_the_loader_path(tmp_path):
    lib = tmp_path / "lib" / "x86_64-linux-clang"
    lib.mkdir(parents=True)
    for name in ("libQnnHtp.so", "libQnnSystem.so", "libQnnHtpPrepare.so"):
        (lib / name).write_bytes(b"")
    assert "not on LD_LIBRARY_PATH" in qnn.sdk_problem({"QNN_SDK_ROOT": str(tmp_path)})
    assert qnn.sdk_problem({"QNN_SDK_ROOT": str(tmp_path), "LD_LIBRARY_PATH": f"/x:{lib}"}) is None


def test_neuropilot_without_sdk_is_a_one_line_refusal(tmp_path, capfd):
    result = _export(["--device", "dimensity-9300", "--target", "neuropilot", "-o", str(tmp_path)])
    assert result.exit_code == ExportError.exit_code
    line = _one_error_line(result, capfd)
    assert "mtk_converter" in line and "mtk_neuron" in line and "NeuroPilot" in line


def test_npu_target_takes_the_chip_from_the_device():
    target = bind_device(get_target("qnn-htp"), "snapdragon-8-gen-3")
    assert target.options.chip == "SM8650" and target.options.recipe == "qnn-16a4w"
    assert bind_device(get_target("neuropilot"), "dimensity-9400").options.chip == "mt6991"
    assert bind_device(get_target("xnnpack"), None) is TARGETS["xnnpack"]
    with pytest.raises(UsageError, match="needs --device"):
        bind_device(get_target("qnn-htp"), None)
    with pytest.raises(UsageError, match="SM7550 is not in"):
        bind_device(get_target("qnn-htp"), "snapdragon-7-gen-3")
    with pytest.raises(UsageError, match="cannot use target neuropilot"):
        bind_device(get_target("neuropilot"), "snapdragon-8-elite")


@pytest.mark.parametrize("recipe, target, device, message", [
    ("8da4w", "qnn-htp", "snapdragon-8-gen-3", "is for xnnpack, vulkan, not qnn"),
    ("qnn-16a4w", "xnnpack", None, "is for qnn, not xnnpack"),
    ("qnn-8a8w", "neuropilot", "dimensity-9300", "is for qnn, not neuropilot"),
    ("neuropilot-16a4w", "qnn-htp", "snapdragon-8-elite", "is for neuropilot, not qnn"),
])
def test_recipe_target_mismatch_is_refused_before_loading(recipe, target, device, message, tmp_path):
    request = ExportRequest(model="llama3.2-1b", checkpoint=tmp_path / "never-read", recipe=recipe,
                            target=target, output_dir=tmp_path / "out", device=device)
    with pytest.raises(UsageError, match=message):
        check_request(request)


def test_npu_target_refuses_a_recipe_without_pt2e(tmp_path):
    path = tmp_path / "fp32-qnn.toml"
    path.write_text('name = "fp32-qnn"\ntargets = ["qnn"]\n')
    request = ExportRequest(model="llama3.2-1b", checkpoint=None, recipe=str(path), target="qnn-htp",
                            output_dir=tmp_path / "out", device="snapdragon-8-gen-3")
    with pytest.raises(UsageError, match="no \\[pt2e\\] section"):
        check_request(request)


def test_qnn_quant_settings_are_plain_data():
    lpbq = qnn_quant_settings(load_recipe("qnn-16a4w").pt2e)
    assert lpbq["default"] == {"quant_dtype": "use_16a4w", "granularity": "PER_TENSOR",
                               "act_observer": "MinMaxObserver", "act_symmetric": False, "is_qat": False}
    (linear,) = lpbq["node_targets"]
    assert linear["ops"] == ["aten.linear.default"]
    assert (linear["quant_dtype"], linear["granularity"], linear["block_size"]) == ("use_16a4w_block",
                                                                                  "PER_BLOCK", [1, 64])
    (channel,) = qnn_quant_settings(load_recipe("qnn-8a8w").pt2e)["node_targets"]
    assert (channel["quant_dtype"], channel["granularity"]) == ("use_8a8w", "PER_CHANNEL")
    assert "block_size" not in channel
    assert neuropilot_quant_settings(Pt2eQuant("neuropilot", "16a4w")) == {
        "quantizer": "NeuropilotQuantizer", "precision": "A16W4", "is_per_channel": True, "is_qat": False}
    assert quant_settings(Pt2eQuant("neuropilot", "8a8w"))["precision"] == "A8W8"


def test_settings_name_real_quantizer_enums():
    from executorch.backends.qualcomm.quantizer.quant_recipe import QuantGranularity
    from executorch.backends.qualcomm.quantizer.quantizer import QuantDtype
    from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset

    for name in ("qnn-16a4w", "qnn-8a8w"):
        settings = qnn_quant_settings(load_recipe(name).pt2e)
        for entry in (settings["default"], *settings["node_targets"]):
            QuantDtype[entry["quant_dtype"]], QuantGranularity[entry["granularity"]]
    # executorch.backends.mediatek imports mtk_converter at package import, so its Precision enum
    # (A16W16, A16W8, A16W4, A8W8, A8W4) cannot be read without the SDK: checked as plain data above.
    for device in DEVICES.values():
        if device.npu and device.npu.backend == "qnn" and device.npu.chip:
            QcomChipset[device.npu.chip]
    from llama_mobile.export.backends.neuropilot import PLATFORMS

    assert {d.npu.chip for d in DEVICES.values() if d.npu and d.npu.target == "neuropilot"} <= set(PLATFORMS)


@pytest.mark.parametrize("pt2e, message", [
    ({"quantizer": "qnn", "scheme": "4a4w"}, "scheme '4a4w' is not one of"),
    ({"quantizer": "tflite", "scheme": "8a8w"}, "quantizer 'tflite'"),
    ({"quantizer": "qnn", "scheme": "8a8w", "block_size": 64}, "only quantizer 'qnn' with scheme '16a4w'"),
    ({"quantizer": "qnn", "scheme": "16a4w", "block_size": 48}, "power of two"),
    ({"quantizer": "qnn", "scheme": "16a4w", "group": 32}, "unknown key 'group'"),
])
def test_pt2e_section_is_strict(pt2e, message):
    with pytest.raises(ConfigError, match=message):
        parse_recipe({"name": "x", "targets": ["qnn"], "pt2e": pt2e}, "x.toml")


def test_pt2e_recipe_keeps_torchao_sections_float_and_its_own_target():
    with pytest.raises(ConfigError, match=r"\[linear\] must stay fp32"):
        parse_recipe({"name": "x", "targets": ["qnn"], "pt2e": {"quantizer": "qnn", "scheme": "8a8w"},
                      "linear": {"scheme": "8da4w", "group_size": 32}}, "x.toml")
    with pytest.raises(ConfigError, match=r"needs targets = \['qnn'\]"):
        parse_recipe({"name": "x", "targets": ["xnnpack"], "pt2e": {"quantizer": "qnn", "scheme": "8a8w"}},
                     "x.toml")
    recipe = load_recipe("qnn-16a4w")
    assert recipe.to_dict()["pt2e"] == {"quantizer": "qnn", "scheme": "16a4w", "block_size": 64}
    assert (recipe.pt2e.activation_bits, recipe.pt2e.weight_bits) == (16, 4)
    with pytest.raises(ConfigError, match="block_size 64 does not divide"):
        check_recipe_fits(recipe, {"layers.0.attention.wq": 96}, 96)


def test_qnn_pt2e_quantizes_a_tiny_model_without_the_sdk(monkeypatch, tiny_state):
    """QnnQuantizer needs no SDK library to annotate: the whole-graph 8a8w recipe runs here."""
    import torch

    from llama_mobile.export.model import build_model
    from llama_mobile.quantize.pt2e import quantize_for_target
    from tests.checkpoints import TINY

    monkeypatch.setenv("QNN_SDK_ROOT", "")  # empty: ExecuTorch leaves the SDK to the caller (no download)
    model = build_model(TINY, 64, dict(tiny_state), attention_kernel="sdpa")
    target = bind_device(get_target("qnn-htp"), "snapdragon-8-elite")
    graph, record = quantize_for_target(model, load_recipe("qnn-8a8w"), target, list(range(1, 40)), 32)
    targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
    # every linear layer (7 per block + output) and the RoPE pair-swap matmuls, per output channel
    assert targets.count("quantized_decomposed.dequantize_per_channel.default") >= 2 * 7 + 1
    assert targets.count("quantized_decomposed.quantize_per_tensor.default") > 20  # activations too
    assert record["chip"] == "SM8750" and record["calibration_tokens"] == 32
    logits = graph(torch.tensor([[1, 2, 3]]), torch.tensor([0]))
    assert logits.shape[-1] == TINY.vocab_size and torch.isfinite(logits).all()


@pytest.mark.slow
def test_vulkan_lowers_the_tiny_model_whole(tiny_hf, tmp_path):
    """Vulkan keeps ExecuTorch's llama custom ops (it has kernels for them): one delegate, nothing outside.
    The host has no GPU, so the program is not run (--no-validate)."""
    from llama_mobile.jobs.export_job import run_export

    request = ExportRequest(model="llama", checkpoint=tiny_hf, recipe="8da4w", target="vulkan",
                            output_dir=tmp_path, context=64, positions=48, validate=False)
    runtime = run_export(request).manifest.to_dict()["runtime"]
    assert runtime["delegated_calls"] == 1 and runtime["ops_outside_delegates"] == {}
    assert runtime["delegated_share"] == 1.0 and runtime["ops_in_delegates"] > 50


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n, d in DEVICES.items() if d.target == "xnnpack"])
def test_tiny_export_with_every_cpu_device_preset(name, tiny_hf, tmp_path):
    from tests.conftest import export_tiny

    device = get_device(name)
    manifest = export_tiny(tiny_hf, tmp_path, device.recipe, device=name, validate=False).manifest
    assert manifest["device"]["name"] == name and manifest["target"]["name"] == "xnnpack"
    assert manifest["device"]["recipe_reason"] == device.recipe_reason
    assert manifest["device"]["target_reason"] == device.target_reason


def test_sdk_problem_is_none_for_backends_in_the_wheel():
    assert sdk_problem(get_target("xnnpack")) is None and sdk_problem(get_target("vulkan")) is None
    assert dataclasses.replace(get_target("vulkan")).experimental
