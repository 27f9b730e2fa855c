"""export --targets: one bundle, one variant per target (XNNPACK and Core ML both lower here; QNN's SDK is
not here, so it is skipped with its reason), and the chooser's rules on the shared vectors."""
import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from llama_mobile.cli.main import main
from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.devices import DEVICES
from llama_mobile.core.errors import BundleError, ExportError, UsageError
from llama_mobile.core.targets import parse_target_list
from llama_mobile.core.variants import at_least, choose_variant, describe_device

VECTORS = Path(__file__).parent / "vectors"
TARGETS = ["xnnpack", "coreml-ios18", "qnn-htp"]


@pytest.fixture(scope="module")
def multi(tmp_path_factory, tiny_hf):
    from llama_mobile.jobs.export_job import ExportRequest
    from llama_mobile.jobs.multi_export import run_multi_export

    out = tmp_path_factory.mktemp("out")
    request = ExportRequest(model="llama", checkpoint=tiny_hf, recipe="8da4w-mixed-gptq", target="xnnpack",
                            output_dir=out, context=64, positions=48, recipe_explicit=False)
    return run_multi_export(request, parse_target_list(",".join(TARGETS)))


def test_one_bundle_holds_a_verified_variant_per_target(multi):
    bundle = verify_bundle(multi.bundle)
    manifest = bundle.manifest
    assert manifest.schema_version == 2
    variants = {v["target"]: v for v in manifest.variants}
    assert list(variants) == TARGETS
    xnnpack, coreml, qnn = (variants[t] for t in TARGETS)
    # the first target is the bundle's top level: every one-target reader runs it
    assert xnnpack["program"] == manifest.runtime.program == "model.pte" and manifest.target.name == "xnnpack"
    assert coreml["program"].startswith("variants/coreml-ios18/") and coreml["backend"] == "coreml"
    assert coreml["recipe"] != xnnpack["recipe"]  # each target its own default recipe
    assert coreml["requires"]["os"] == "ios" and coreml["requires"]["min_os"] == "18"
    assert xnnpack["requires"]["os"] is None and xnnpack["requires"]["min_ram_gb"] >= 1
    assert xnnpack["parity"]["passed"] and coreml["parity"]["passed"]
    assert qnn["status"] == "skipped" and "QNN" in qnn["reason"] and qnn["program"] is None
    # the tokenizer once, at the top
    assert [name for name in manifest.files if name.endswith("tokenizer.json")] == ["tokenizer.json"]
    program, _ = bundle.variant_files("coreml-ios18")
    assert program.is_file() and program.parent.name == "coreml-ios18"
    with pytest.raises(UsageError, match="qnn-htp variant was skipped"):
        bundle.variant_files("qnn-htp")
    assert not any(p.name.startswith(".") for p in multi.bundle.parent.iterdir())  # the scratch folder is gone


def test_the_first_variant_is_what_a_one_target_export_writes(multi, tmp_path, tiny_hf):
    from tests.conftest import export_tiny

    plain = export_tiny(tiny_hf, tmp_path, "8da4w-mixed-gptq")
    assert (multi.bundle / "model.pte").read_bytes() == (plain.bundle / "model.pte").read_bytes()


def test_verify_says_which_variant_a_device_runs(multi, capfd):
    result = CliRunner().invoke(main, ["verify", str(multi.bundle), "--device", "apple-a17-pro", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["chosen"] == "coreml-ios18" and "skipped" in data["reasons"]["qnn-htp"]
    result = CliRunner().invoke(main, ["verify", str(multi.bundle), "--device", "snapdragon-8-gen-3"])
    assert result.exit_code == 0 and "snapdragon-8-gen-3 runs: xnnpack" in result.stdout
    assert "variant qnn-htp: skipped" in result.stdout


def test_validate_runs_a_variant_and_refuses_a_skipped_or_off_host_one(multi, tiny_hf, capfd):
    result = CliRunner().invoke(main, ["validate", str(multi.bundle), "--variant", "xnnpack", "--positions", "32",
                                       "--reference", str(tiny_hf), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["references"]["fp32"]["passed"]
    result = CliRunner().invoke(main, ["validate", str(multi.bundle), "--variant", "qnn-htp"])
    assert result.exit_code == 2 and "skipped" in result.stderr + capfd.readouterr().err
    result = CliRunner().invoke(main, ["validate", str(multi.bundle), "--variant", "coreml-ios18",
                                       "--reference", str(tiny_hf)])
    assert result.exit_code != 0 and "only on macOS" in result.stderr + capfd.readouterr().err


def test_a_variant_pointing_outside_the_bundle_is_refused(multi, tmp_path):
    copy = shutil.copytree(multi.bundle, tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["variants"][1]["program"] = "../elsewhere/model.pte"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="not a plain file name inside"):
        verify_bundle(copy)
    manifest["schema_version"] = 1  # variants need schema version 2
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError):
        verify_bundle(copy)


def test_strict_makes_a_missing_sdk_an_error(tmp_path, tiny_hf):
    from llama_mobile.jobs.export_job import ExportRequest
    from llama_mobile.jobs.multi_export import run_multi_export

    request = ExportRequest(model="llama", checkpoint=tiny_hf, recipe="8da4w", target="xnnpack", output_dir=tmp_path,
                            context=64, recipe_explicit=False)
    with pytest.raises(ExportError, match="QNN"):
        run_multi_export(request, parse_target_list("xnnpack,qnn-htp"), strict=True)
    assert list(tmp_path.iterdir()) == []  # nothing written, no scratch left


def test_the_cli_checks_targets(tmp_path, capfd):
    def run(*args):
        result = CliRunner().invoke(main, ["export", "-o", str(tmp_path), *args])
        return result.exit_code, result.stderr + capfd.readouterr().err

    code, err = run("--targets", "xnnpack,nope")
    assert code == 2 and "unknown target 'nope'" in err
    code, err = run("--targets", "xnnpack")
    assert code == 2 and "two or more" in err
    code, err = run("--targets", "xnnpack,coreml-ios18", "--target", "xnnpack")
    assert code == 2 and "takes neither --target" in err
    code, err = run("--strict")
    assert code == 2 and "--strict applies to --targets" in err


def test_plan_prices_every_variant_and_their_sum():
    def planned(*args):
        result = CliRunner().invoke(main, ["plan", "--model", "llama3.2-1b", "--context", "2048", *args, "--json"])
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)

    whole = planned("--targets", "xnnpack,coreml-ios18")
    one = planned("--recipe", "8da4w-mixed-gptq")["size"]["total_bytes"]
    two = planned("--recipe", "coreml-int4")["size"]["total_bytes"]
    assert whole["targets"]["xnnpack"]["size"]["total_bytes"] == one
    assert whole["targets"]["coreml-ios18"]["recipe"] == "coreml-int4"
    assert whole["total_bytes"] == one + two


def test_all_android_and_all_ios_name_a_variant_per_npu_soc_and_ios_runtime():
    specs = {spec.name: spec for spec in parse_target_list("all-android,all-ios,all-android")}
    assert list(specs) == ["xnnpack-android", "qnn-htp-sm8650", "qnn-htp-sm8750", "neuropilot-mt6989",
                           "neuropilot-mt6991", "coreml-ios18", "xnnpack-ios"]
    assert specs["qnn-htp-sm8650"].device == "snapdragon-8-gen-3" and specs["qnn-htp-sm8650"].target == "qnn-htp"
    assert specs["xnnpack-ios"].single_file and specs["xnnpack-ios"].os == "ios"
    with pytest.raises(UsageError, match="two or more"):
        parse_target_list("xnnpack,xnnpack")


def test_all_ios_bundle_chooses_per_ios_version(tmp_path, tiny_hf):
    """Core ML on iOS 18, the one-file XNNPACK program before it; never the other OS's variant."""
    from llama_mobile.jobs.export_job import ExportRequest
    from llama_mobile.jobs.multi_export import run_multi_export

    request = ExportRequest(model="llama", checkpoint=tiny_hf, recipe="8da4w", target="xnnpack", output_dir=tmp_path,
                            context=64, positions=48, recipe_explicit=False)
    result = run_multi_export(request, parse_target_list("all-ios,qnn-htp"), label="all-ios")
    manifest = verify_bundle(result.bundle).manifest
    assert result.bundle.name == "llama-all-ios"
    variants = {v["target"]: v for v in manifest.variants}
    assert variants["xnnpack-ios"]["weights"] is None  # one file: iOS's text runner takes no weights file
    ios = {"os": "ios", "isa": [], "ram_gb": 8}
    assert choose_variant(manifest.variants, {**ios, "os_version": "18.1"}).target == "coreml-ios18"
    assert choose_variant(manifest.variants, {**ios, "os_version": "17.5"}).target == "xnnpack-ios"
    android = {"os": "android", "os_version": "14", "isa": [], "ram_gb": 8}
    assert choose_variant(manifest.variants, android).target is None


# --- the chooser ---------------------------------------------------------------------------------------

CHOICE = json.loads((VECTORS / "variant_choice.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("case", CHOICE["cases"], ids=lambda c: c["name"])
def test_the_chooser_on_the_shared_vectors(case):
    variants = case.get("variants", CHOICE["variants"])
    choice = choose_variant(variants, case["device"])
    assert choice.target == case["expected"]
    if case["expected"] is None:
        assert set(choice.reasons) == {v["target"] for v in variants}  # every variant says why not


def test_versions_compare_part_by_part():
    assert at_least("18", "18.0") and at_least("18.0", "18") and at_least("18.1", "18")
    assert not at_least("17.4", "18") and at_least("10", "9.9")
    variant = {"target": "c", "backend": "coreml", "status": "ok", "requires": {"os": "ios", "min_os": "18-beta"}}
    choice = choose_variant([variant], {"os": "ios", "os_version": "18"})
    assert choice.target is None and "cannot compare" in choice.reasons["c"]


def test_every_device_preset_gets_a_variant_of_a_cpu_and_npu_bundle():
    """A bundle with XNNPACK and each NPU backend: every preset runs something; an NPU preset of a listed
    chip gets its NPU variant, an iPhone its Core ML one."""
    variants = [{"target": "xnnpack", "backend": "xnnpack", "status": "ok", "requires": {"min_ram_gb": 1}},
                {"target": "coreml-ios18", "backend": "coreml", "status": "ok", "requires": {"os": "ios", "min_os": "18"}}]
    for device in DEVICES.values():
        if device.npu and device.npu.backend in ("qnn", "neuropilot") and device.npu.chip:
            variants.append({"target": f"{device.npu.backend}-{device.npu.chip}", "backend": device.npu.backend,
                             "status": "ok", "requires": {"os": "android", "npu_backend": device.npu.backend,
                                                          "chip": device.npu.chip}})
    for device in DEVICES.values():
        choice = choose_variant(variants, describe_device(device))
        if device.vendor == "Apple":
            assert choice.target == "coreml-ios18", device.name
        elif device.npu and device.npu.backend in ("qnn", "neuropilot") and device.npu.chip:
            assert choice.target == f"{device.npu.backend}-{device.npu.chip}", device.name
        else:
            assert choice.target == "xnnpack", device.name
