"""The shared vectors in tests/vectors/ hold for the Python code; the Android and iOS cores read the same files."""
import json
import shutil
from pathlib import Path

import pytest

from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.errors import BundleError, UsageError
from llama_mobile.core.manifest import schema_problems
from llama_mobile.core.presets import MODEL_PRESETS, ChatTemplate
from llama_mobile.core.tokenizer import MARKERS, WORD_JOINER, chat_prompt, neutralize_specials
from llama_mobile.runtime_harness.guard_prompt import (
    GuardReplyError,
    format_guard_prompt,
    guard_template_for_manifest,
    parse_guard_reply,
)

VECTORS = Path(__file__).parent / "vectors"


def cases(name: str) -> list[dict]:
    return json.loads((VECTORS / name).read_text(encoding="utf-8"))["cases"]


@pytest.mark.parametrize("case", cases("guard_prompts.json"), ids=lambda c: c["name"])
def test_guard_prompts(case):
    options = {k: case[k] for k in ("categories", "excluded") if k in case}
    if "error" in case:
        with pytest.raises(UsageError):
            format_guard_prompt(case["conversation"], **options)
    else:
        assert format_guard_prompt(case["conversation"], **options) == case["expected"]


@pytest.mark.parametrize("case", cases("guard_replies.json"), ids=lambda c: c["name"])
def test_guard_replies(case):
    if "error" in case:
        with pytest.raises(GuardReplyError):
            parse_guard_reply(case["reply"], case.get("categories"))
    else:
        verdict = parse_guard_reply(case["reply"], case.get("categories"))
        assert {"safe": verdict.safe, "categories": list(verdict.categories),
                "names": list(verdict.names)} == case["expected"]


def test_vector_counts():
    assert len(cases("guard_prompts.json")) >= 6 and len(cases("guard_replies.json")) >= 12


def test_guard_template_vector_is_current():
    assert json.loads((VECTORS / "guard_template.json").read_text(encoding="utf-8")) == guard_template_for_manifest()


@pytest.mark.parametrize("case", cases("chat_prompts.json"), ids=lambda c: f"{c['template']['name']}-{c['message'][:12]}")
def test_chat_prompts(case):
    assert chat_prompt(ChatTemplate(**case["template"]), case["message"]) == case["expected"]


def test_chat_vectors_use_the_shipped_templates():
    shipped = {p.chat_template.name: p.chat_template for p in MODEL_PRESETS.values()}
    for case in cases("chat_prompts.json"):
        assert ChatTemplate(**case["template"]) == shipped[case["template"]["name"]]


@pytest.mark.parametrize("case", cases("manifests/index.json"), ids=lambda c: c["file"])
def test_manifests(case):
    manifest = json.loads((VECTORS / "manifests" / case["file"]).read_text(encoding="utf-8"))
    problems = schema_problems(manifest)
    if case["valid"]:
        assert problems == []
        assert manifest["model"]["task"] == case["task"]
        assert manifest["prompt_template"]["name"] == case["template"]
        assert manifest["special_tokens"]["bos_id"] == case["bos_id"]
        assert manifest["special_tokens"]["eos_ids"] == case["eos_ids"]
        assert manifest["tokenizer"]["file"] == case["tokenizer"] and case["tokenizer"] in manifest["files"]
        assert manifest["runtime"]["context_length"] == case["context_length"]
        assert manifest["runtime"].get("weights") == case["weights"]
        if case["weights"] is not None:
            assert case["weights"] in manifest["files"]
        preset = MODEL_PRESETS[manifest["model"]["preset"]]
        assert manifest["prompt_template"]["prefix"] == preset.chat_template.prefix
        assert manifest["special_tokens"]["bos_id"] == preset.specials.bos_id
        assert manifest["model"]["task"] == preset.task
    elif case["error"] == "schema_version":
        assert any(p.startswith("schema_version:") for p in problems)
    else:
        field = case["error"].removeprefix("missing:")
        assert f"(top): '{field}' is a required property" in problems


def test_bundle_vector_verifies_and_tampering_is_caught(tmp_path):
    assert verify_bundle(VECTORS / "bundle").manifest.schema_version == 1
    copy = shutil.copytree(VECTORS / "bundle", tmp_path / "bundle")
    (copy / "model.pte").write_bytes((copy / "model.pte").read_bytes().replace(b"real", b"fake"))
    with pytest.raises(BundleError, match="SHA-256"):
        verify_bundle(copy)


def test_manifest_vectors_cover_external_weights():
    assert {c["weights"] for c in cases("manifests/index.json") if c["valid"]} == {None, "model.ptd"}


def test_bundle_with_external_weights_verifies_and_tampering_is_caught(tmp_path):
    manifest = verify_bundle(VECTORS / "bundle_weights").manifest.to_dict()
    assert manifest["runtime"]["weights"] == "model.ptd" and "model.ptd" in manifest["files"]
    copy = shutil.copytree(VECTORS / "bundle_weights", tmp_path / "bundle")
    (copy / "model.ptd").write_bytes((copy / "model.ptd").read_bytes().upper())
    with pytest.raises(BundleError, match="SHA-256"):
        verify_bundle(copy)



def test_bundle_with_adapters_verifies_and_names_their_programs():
    bundle = verify_bundle(VECTORS / "bundle_adapters")
    assert [a["name"] for a in bundle.manifest.adapters] == ["support", "sql"]
    assert bundle.adapter_program("sql") == VECTORS / "bundle_adapters" / "adapters" / "sql.pte"
    assert bundle.weights == VECTORS / "bundle_adapters" / "model.ptd"
    with pytest.raises(UsageError, match="support, sql"):
        bundle.adapter_program("legal")


def test_tampered_adapter_program_is_caught(tmp_path):
    copy = shutil.copytree(VECTORS / "bundle_adapters", tmp_path / "bundle")
    program = copy / "adapters" / "support.pte"
    program.write_bytes(program.read_bytes().upper())
    with pytest.raises(BundleError, match="SHA-256"):
        verify_bundle(copy)


@pytest.mark.parametrize("program", ["adapters/../model.pte", "model.pte", "/adapters/sql.pte", "adapters/sql.ptd"])
def test_adapter_program_outside_adapters_is_refused(tmp_path, program):
    copy = shutil.copytree(VECTORS / "bundle_adapters", tmp_path / "bundle")
    manifest = copy / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["adapters"][1]["program"] = program
    manifest.write_text(json.dumps(data, indent=2), encoding="utf-8")
    with pytest.raises(BundleError):
        verify_bundle(copy)


def test_adapters_without_base_weights_are_refused(tmp_path):
    copy = shutil.copytree(VECTORS / "bundle_adapters", tmp_path / "bundle")
    manifest = copy / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["runtime"]["weights"] = None
    manifest.write_text(json.dumps(data, indent=2), encoding="utf-8")
    with pytest.raises(BundleError, match="no base weights"):
        verify_bundle(copy)


def test_bundle_with_variants_verifies_and_resolves_them():
    bundle = verify_bundle(VECTORS / "bundle_variants")
    assert bundle.manifest.schema_version == 2
    assert [(v["target"], v["status"]) for v in bundle.manifest.variants] == [
        ("xnnpack", "ok"), ("coreml-ios18", "ok"), ("qnn-htp", "skipped")]
    assert bundle.variant_files("xnnpack") == (bundle.program, bundle.weights)  # the top level is the first ok one
    program, weights = bundle.variant_files("coreml-ios18")
    assert program == VECTORS / "bundle_variants" / "variants" / "coreml-ios18" / "model.pte" and program.is_file()
    assert weights is None
    with pytest.raises(UsageError, match="skipped"):
        bundle.variant_files("qnn-htp")


def test_tampered_variant_program_is_caught(tmp_path):
    copy = shutil.copytree(VECTORS / "bundle_variants", tmp_path / "bundle")
    program = copy / "variants" / "coreml-ios18" / "model.pte"
    program.write_bytes(program.read_bytes().upper())
    with pytest.raises(BundleError, match="SHA-256"):
        verify_bundle(copy)


def test_variants_in_a_schema_version_1_manifest_are_refused(tmp_path):
    copy = shutil.copytree(VECTORS / "bundle_variants", tmp_path / "bundle")
    manifest = copy / "manifest.json"
    data = json.loads(manifest.read_text(encoding="utf-8"))
    data["schema_version"] = 1
    manifest.write_text(json.dumps(data, indent=2), encoding="utf-8")
    with pytest.raises(BundleError, match="schema 1"):
        verify_bundle(copy)


INJECTION = json.loads((VECTORS / "injection.json").read_text(encoding="utf-8"))


def test_injection_vector_states_the_rule_of_this_code():
    assert INJECTION["joiner"] == WORD_JOINER and tuple(INJECTION["markers"]) == MARKERS


@pytest.mark.parametrize("case", INJECTION["neutralize"], ids=lambda c: c["name"])
def test_injection_neutralize(case):
    got = neutralize_specials(case["text"], case.get("extra", ()))
    assert got == case["expected"]
    assert neutralize_specials(got, case.get("extra", ())) == got  # idempotent


@pytest.mark.parametrize("case", INJECTION["chat"], ids=lambda c: f"{c['template']['name']}-{c['message'][:12]}")
def test_injection_chat(case):
    assert chat_prompt(case["template"], case["message"]) == case["expected"]


@pytest.mark.parametrize("case", INJECTION["guard"], ids=lambda c: c["name"])
def test_injection_guard(case):
    assert format_guard_prompt(case["conversation"]) == case["expected"]
