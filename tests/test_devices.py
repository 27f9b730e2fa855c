import pytest

from llama_mobile.core.devices import DEVICES, get_device
from llama_mobile.core.errors import ResourceError, UsageError
from llama_mobile.core.presets import MODEL_PRESETS
from llama_mobile.core.targets import TARGETS
from llama_mobile.jobs.export_request import linear_widths
from llama_mobile.jobs.plan import plan
from llama_mobile.quantize.recipe import check_recipe_fits, load_recipe

EXPECTED_RECIPES = {name: "8da4w-mixed" for name in DEVICES}


@pytest.mark.parametrize("name", list(DEVICES))
def test_every_device_preset_validates(name):
    device = DEVICES[name]
    assert device.name == name
    assert device.big.count > 0 and device.big.name
    for cluster in (device.mid, device.little):
        assert cluster.count >= 0 and bool(cluster.count) == bool(cluster.name)
    assert 0 < device.threads <= device.big.count + device.mid.count
    assert device.bandwidth_gbs > 0 and device.ram_gb > 0 and device.context >= 512
    assert set(device.isa) <= {"dotprod", "i8mm", "sve2", "sme2"}
    assert device.target in TARGETS
    if device.npu:
        assert device.npu.backend in (None, "qnn", "neuropilot", "coreml")
    for reason in (device.target_reason, device.recipe_reason, device.threads_reason, device.context_reason):
        assert reason
    arch = MODEL_PRESETS["llama3.2-1b"].architecture
    recipe = load_recipe(device.recipe)
    check_recipe_fits(recipe, linear_widths(arch), arch.dim)
    assert device.target in recipe.targets
    assert device.to_dict()["name"] == name


def test_recipe_per_device_is_the_registry_choice():
    assert {name: d.recipe for name, d in DEVICES.items()} == EXPECTED_RECIPES
    assert "i8mm" not in get_device("arm-v8.2-generic").isa  # int4 there rests on dotprod kernels
    assert "dotprod" in get_device("arm-v8.2-generic").recipe_reason


def test_npu_backends_follow_the_vendor():
    assert get_device("snapdragon-8-gen-3").npu.backend == "qnn"
    assert get_device("dimensity-9400").npu.backend == "neuropilot"
    assert get_device("apple-m4").npu.backend == "coreml"
    assert get_device("tensor-g4").npu.backend is None


def test_unknown_device_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown device"):
        get_device("snapdragon-9000")


def test_3b_on_8gb_gets_a_shorter_context_or_a_reason():
    device = get_device("exynos-2400")
    assert device.ram_gb == 8
    arch = MODEL_PRESETS["llama3.2-3b"].architecture
    shrunk = plan(arch, load_recipe("8da4w"), context=8192, device=device)
    assert shrunk.requested_context == 8192 and shrunk.context < 8192
    assert shrunk.device.fits and any("context shrunk" in n for n in shrunk.notes)
    with pytest.raises(ResourceError, match="exynos-2400"):
        plan(arch, load_recipe("fp32"), device=device)
