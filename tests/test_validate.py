import json
import subprocess
import sys

from llama_mobile.jobs.validate_job import ValidationRequest, run_validation
from tests.checkpoints import TINY, write_hf
from tests.conftest import export_tiny


def test_honest_bundle_passes_against_its_reference(tiny_fp32_bundle, tiny_hf):
    report = run_validation(ValidationRequest(bundle=tiny_fp32_bundle.bundle, reference=tiny_hf, positions=48))
    assert report.passed
    fp32 = report.references["fp32"]["metrics"]
    assert fp32["top1_agreement"] == 1.0 and fp32["kl_mean"] < 1e-6
    # bf16 is reported as a second reference: close, not identical
    bf16 = report.references["bf16"]["metrics"]
    assert 0 < bf16["kl_mean"] < 0.05
    assert report.generation.exact == report.generation.prompts > 0


def test_bundle_with_tampered_weights_fails_the_gate(tmp_path, tiny_state, tiny_hf):
    tampered = dict(tiny_state)
    tampered["layers.1.feed_forward.w2.weight"] = tiny_state["layers.1.feed_forward.w2.weight"] * 4
    bad_ckpt = write_hf(tmp_path / "tampered", TINY, tampered)
    bundle = export_tiny(bad_ckpt, tmp_path / "out", "fp32").bundle  # honest against its own weights
    report = run_validation(ValidationRequest(bundle=bundle, reference=tiny_hf, positions=48))
    assert not report.passed
    failures = report.references["fp32"]["failures"]
    assert any(f.startswith("kl_mean") for f in failures)


def test_cli_exit_codes_and_threshold_overrides(tiny_fp32_bundle, tiny_hf):
    base = [sys.executable, "-m", "llama_mobile.cli", "validate", str(tiny_fp32_bundle.bundle),
            "--reference", str(tiny_hf), "--positions", "32", "--json"]
    ok = subprocess.run(base, capture_output=True, text=True, timeout=600)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["passed"] is True
    # an impossible promise (perplexity must improve 2x) fails with the gate's exit code
    strict = subprocess.run([*base, "--max-ppl-ratio", "0.5"], capture_output=True, text=True, timeout=600)
    assert strict.returncode == 10
    assert json.loads(strict.stdout)["passed"] is False
    assert "ppl_ratio" in strict.stderr and "off by" in strict.stderr
