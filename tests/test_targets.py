"""Target options are typed and checked when the registry is built."""
import pytest

from llama_mobile.core.errors import ConfigError
from llama_mobile.core.targets import TARGETS, Target, TargetOptions, check_registry


def test_every_shipped_target_passes_the_registry_check():
    check_registry(TARGETS)
    assert TARGETS["coreml-ios18-cpu-ne"].options.compute_units == "cpu_and_ne"
    assert TARGETS["xnnpack"].options.to_dict() == {"dtypes": ["fp32", "fp16", "bf16"]}


def test_a_misspelt_option_fails_the_registry_not_the_export():
    bad = Target(name="coreml-typo", backend="coreml", summary="", linear_schemes=(), embedding_schemes=(),
                 options=TargetOptions(compute_units="cpu_and_npu", deployment_target="iOS19", dtypes=("fp8",)))
    with pytest.raises(ConfigError) as caught:
        check_registry({bad.name: bad})
    assert len(caught.value.problems) == 3  # every problem at once
    with pytest.raises(TypeError):
        TargetOptions(compute_unit="all")  # a misspelt key is not a silent default any more
