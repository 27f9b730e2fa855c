import pytest

from llama_mobile.core.devices import DEVICES
from llama_mobile.core.presets import MODEL_PRESETS
from llama_mobile.jobs.export_request import ExportRequest, check_request, device_plan
from tests.conftest import export_tiny


@pytest.mark.parametrize("name", list(DEVICES))
def test_every_device_preset_plans_a_1b_export(name, tmp_path):
    device = DEVICES[name]
    request = ExportRequest(model="llama3.2-1b", checkpoint=None, recipe=device.recipe, target=device.target,
                            output_dir=tmp_path, device=name)
    _, recipe, target = check_request(request)
    assert (recipe.name, target.name) == (device.recipe, device.target)
    fitted = device_plan(request, MODEL_PRESETS["llama3.2-1b"].architecture, recipe, device.context)
    assert fitted.device.fits and fitted.context <= device.context
    assert fitted.device.decode_tokens_per_s_ceiling > 0


def test_export_with_a_device_records_it(tiny_hf, tmp_path):
    result = export_tiny(tiny_hf, tmp_path, "8da4w", device="snapdragon-8-gen-3", validate=False)
    device = result.manifest.to_dict()["device"]
    assert device["name"] == "snapdragon-8-gen-3"
    assert device["recipe_reason"] and device["plan"]["context"] == 64


def test_memory_preflight_matches_measured_exports_and_refuses(monkeypatch):
    import llama_mobile.jobs.preflight as preflight
    from llama_mobile.core.errors import ResourceError
    from llama_mobile.quantize.recipe import load_recipe

    smol = MODEL_PRESETS["smollm2-135m-instruct"].architecture
    one_b = MODEL_PRESETS["llama3.2-1b"].architecture
    three_b = MODEL_PRESETS["llama3.2-3b"].architecture
    measured = [(smol, "fp32", 512, 2.15), (smol, "8da4w-mixed", 2048, 1.99), (one_b, "8da4w", 2048, 3.67),
                (three_b, "8da4w", 2048, 7.91)]
    for arch, recipe, context, gib in measured:
        estimate = preflight.export_peak_bytes(arch, load_recipe(recipe), context) / 2**30
        assert abs(estimate - gib) / gib < 0.15, (recipe, estimate, gib)
    monkeypatch.setattr(preflight, "available_bytes", lambda: 2 * 2**30)
    with pytest.raises(ResourceError, match="needs about 3.\\d GiB of memory but 2.0 GiB"):
        preflight.check_export_fits(one_b, load_recipe("8da4w"), 2048)


def test_preflight_refuses_before_any_weight_is_read(monkeypatch, tmp_path):
    import llama_mobile.jobs.preflight as preflight
    from llama_mobile.core.errors import ResourceError
    from llama_mobile.jobs.export_job import run_export

    monkeypatch.setattr(preflight, "available_bytes", lambda: 1 * 2**30)
    request = ExportRequest(model="llama3.2-3b", checkpoint=tmp_path / "never-read", recipe="8da4w",
                            target="xnnpack", output_dir=tmp_path / "out")
    with pytest.raises(ResourceError, match="GiB of memory but 1.0 GiB"):
        run_export(request)
