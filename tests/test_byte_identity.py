"""The restructure (issue 18) changes no artifact: the embedded model's programs and weights for the
then-default recipe (8da4w-mixed) and fp32 are byte for byte those written before it (recorded at commit 0cc5415 with the pinned
torch/executorch/torchao). Slow: two SmolLM2 exports."""
import hashlib

import pytest

from llama_mobile.jobs.export_job import ExportRequest, run_export

RECORDED = {
    "8da4w-mixed": {"model.pte": "3e165484415cbdd546c5d63fc860bf6cd17aae2319c634030148fce4f2136db7",
                     "model.ptd": "2df20aa13327feea239c1eeb1d2938b4f330cfe0bc4e606e7007179cc0f69154"},
    "fp32": {"model.pte": "0fc1b8652dc8e6d83495f3b629df28244d0f2fc471cc934cc8391253aeedaa3e",
             "model.ptd": "0652bac106b099fb191bb221e4707fd48ba5225412f74d82209172121f907a32"},
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", list(RECORDED))
def test_embedded_exports_are_byte_identical_to_the_recorded_ones(tmp_path, recipe):
    result = run_export(ExportRequest(model="smollm2-135m-instruct", checkpoint=None, recipe=recipe,
                                      target="xnnpack", output_dir=tmp_path, validate=False))
    got = {name: hashlib.sha256((result.bundle / name).read_bytes()).hexdigest() for name in RECORDED[recipe]}
    assert got == RECORDED[recipe]
