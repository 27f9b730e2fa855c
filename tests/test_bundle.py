import errno
import json
import shutil

import pytest

from llama_mobile.core.errors import BundleError, OutputError
from llama_mobile.core.bundle import verify_bundle
from llama_mobile.core.manifest import read_manifest
from tests.conftest import export_tiny


@pytest.fixture
def bundle_copy(tmp_path, tiny_fp32_bundle):
    return shutil.copytree(tiny_fp32_bundle.bundle, tmp_path / "bundle")


def test_modified_file_is_detected(bundle_copy):
    data = bytearray((bundle_copy / "model.pte").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (bundle_copy / "model.pte").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model.pte does not match its SHA-256"):
        verify_bundle(bundle_copy)


def test_missing_file_is_detected(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match="tokenizer.json is missing"):
        verify_bundle(bundle_copy)


def test_unknown_schema_version_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="schema version 99 is not supported"):
        read_manifest(bundle_copy)


def test_manifest_breaking_schema_is_refused(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    del manifest["special_tokens"]["eos_ids"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="eos_ids"):
        read_manifest(bundle_copy)


def test_file_entry_cannot_escape_the_bundle(bundle_copy):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["files"]["../outside"] = manifest["files"]["model.pte"]
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="escapes the bundle"):
        verify_bundle(bundle_copy)


def test_interrupted_export_keeps_the_previous_bundle(tmp_path, tiny_hf, tiny_fp32_bundle, monkeypatch):
    out = tmp_path / "out"
    previous = shutil.copytree(tiny_fp32_bundle.bundle, out / tiny_fp32_bundle.bundle.name)
    before = (previous / "manifest.json").read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    from llama_mobile.jobs import export_job

    monkeypatch.setattr(export_job, "measure_parity", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export_tiny(tiny_hf, out, "fp32")
    assert (previous / "manifest.json").read_bytes() == before
    verify_bundle(previous)
    assert sorted(p.name for p in out.iterdir()) == [previous.name]


def test_disk_full_is_a_clear_error_and_leaves_nothing(tmp_path, tiny_hf, monkeypatch):
    import llama_mobile.core.atomic

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(llama_mobile.core.atomic.os, "fsync", full)
    out = tmp_path / "out"
    with pytest.raises(OutputError, match="disk full"):
        export_tiny(tiny_hf, out, "fp32", validate=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_unwritable_output_is_refused_before_work(tmp_path, tiny_hf, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        export_tiny(tiny_hf, blocker / "out", "fp32")
    # A folder without write permission (root ignores permission bits, so ask os.access directly).
    import llama_mobile.core.atomic

    monkeypatch.setattr(llama_mobile.core.atomic.os, "access", lambda path, mode: False)
    with pytest.raises(OutputError, match="not writable"):
        export_tiny(tiny_hf, tmp_path / "out", "fp32")


def test_failing_gate_publishes_nothing_under_the_final_name(tmp_path, tiny_hf):
    from llama_mobile.core.errors import ParityFailure

    recipe = tmp_path / "strict-4bit.toml"
    recipe.write_text('name = "strict-4bit"\n[linear]\nscheme = "8da4w"\ngroup_size = 64\n'
                      '[thresholds]\nmin_top1 = 0.999\nmax_kl_mean = 0.00001\n')
    out = tmp_path / "out"
    with pytest.raises(ParityFailure, match="top1_agreement|kl_mean"):
        export_tiny(tiny_hf, out, str(recipe))
    names = sorted(p.name for p in out.iterdir())
    assert names == ["llama-strict-4bit-xnnpack.rejected"]
    parity = json.loads((out / names[0] / "parity.json").read_text())
    assert parity["passed"] is False and parity["failures"]


def _rewrite(bundle, change):
    manifest = json.loads((bundle / "manifest.json").read_text())
    change(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("name", ["/etc/hostname", "../tokenizer.json", "sub/tokenizer.json", ".hidden", "..",
                                  "a\\b.json"])
def test_a_bundle_is_closed_every_role_is_a_plain_listed_name(bundle_copy, name):
    """A manifest may not point a reader at a file it does not hash (issue 19: bundles are not closed)."""
    def point_tokenizer(manifest):
        manifest["tokenizer"]["file"] = name
    _rewrite(bundle_copy, point_tokenizer)
    with pytest.raises(BundleError, match="tokenizer.file .* is not a plain file name"):
        verify_bundle(bundle_copy)


def test_a_stray_weights_file_is_refused_and_never_read(bundle_copy, tiny_fp32_bundle):
    """Which weights a program gets comes from the manifest: an unlisted model.ptd beside it is an error."""
    assert verify_bundle(bundle_copy).weights is None
    (bundle_copy / "model.ptd").write_bytes(b"\0" * 64)
    with pytest.raises(BundleError, match="model.ptd is not listed in the manifest"):
        verify_bundle(bundle_copy)


def test_typed_manifest_round_trips_the_json(tiny_fp32_bundle):
    from llama_mobile.core.manifest import Manifest

    on_disk = json.loads((tiny_fp32_bundle.bundle / "manifest.json").read_text())
    assert Manifest.from_dict(on_disk).to_dict() == on_disk
    assert list(Manifest.from_dict(on_disk).to_dict()) == list(on_disk)  # key order too
