"""The parity gate on the real embedded model: fp32 near-identical, a collapsing recipe refused (slow)."""
import json

import pytest

from llama_mobile.core.errors import ParityFailure
from llama_mobile.jobs.export_job import ExportRequest, run_export

pytestmark = pytest.mark.slow


def export_smollm2(out, recipe):
    return run_export(ExportRequest(model="smollm2-135m-instruct", checkpoint=None, recipe=recipe,
                                    target="xnnpack", output_dir=out))


def test_fp32_is_near_identical(tmp_path):
    parity = export_smollm2(tmp_path, "fp32").parity
    assert parity["passed"]
    assert parity["metrics"]["top1_agreement"] >= 0.99 and parity["metrics"]["kl_mean"] < 1e-3


def test_four_bit_per_channel_collapses_and_is_refused(tmp_path):
    # "4-bit with a huge group": one scale per 576-wide row. Eagerly: top-1 0.29, KL 1.41, ppl ratio 3.5.
    recipe = tmp_path / "int4-per-channel.toml"
    recipe.write_text('name = "int4-per-channel"\n[linear]\nscheme = "8da4w"\ngroup_size = 0\n'
                      '[embedding]\nscheme = "8w"\n[thresholds]\nmin_top1 = 0.5\nmin_cosine = 0.75\n'
                      'max_ppl_ratio = 1.6\nmax_kl_mean = 0.6\n')
    out = tmp_path / "out"
    with pytest.raises(ParityFailure, match="kl_mean"):
        export_smollm2(out, str(recipe))
    rejected = out / "smollm2-135m-instruct-int4-per-channel-xnnpack.rejected"
    parity = json.loads((rejected / "parity.json").read_text())
    assert parity["metrics"]["ppl_ratio"] > 2.0
    assert not (out / "smollm2-135m-instruct-int4-per-channel-xnnpack").exists()
