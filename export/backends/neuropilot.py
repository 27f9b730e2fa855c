"""MediaTek APU through ExecuTorch's NeuroPilot partitioner.

Needs MediaTek's NeuroPilot Express SDK python wheels (mtk_converter, which ExecuTorch's partitioner
imports, and mtk_neuron, which compiles the graph); neither is on PyPI.
"""
from __future__ import annotations

from importlib.util import find_spec

from llama_mobile.core.errors import ExportError
from llama_mobile.core.targets import Target
from llama_mobile.export.backends.base import Backend, register

SDK_MODULES = ("mtk_converter", "mtk_neuron")
PLATFORMS = ("mt6989", "mt6991", "mt6993")  # ExecuTorch 1.5.1's SUPPORTED_PLATFORM_CONFIGS
INSTALL = ("download MediaTek's NeuroPilot Express SDK and pip install its mtk_converter and mtk_neuron "
           "wheels into this environment")


class NeuropilotBackend(Backend):
    name = "neuropilot"
    model_options = {"attention_kernel": "sdpa"}  # plain ops: the APU has no kernel for ExecuTorch's llama ops
    quantizes_whole_graph = True
    needs_chip = True

    def sdk_problem(self) -> str | None:
        """Cheap: finds modules without importing them."""
        missing = [name for name in SDK_MODULES if find_spec(name) is None]
        return f"python modules {', '.join(missing)} are not installed" if missing else None

    def check_environment(self, target: Target) -> None:
        problem = self.sdk_problem()
        if problem:
            raise ExportError(f"target {target.name} needs MediaTek's NeuroPilot SDK (not on PyPI): {problem}",
                              fix=INSTALL)
        if target.options.chip not in PLATFORMS:
            raise ExportError(f"target {target.name} has no MediaTek platform",
                              fix="pass --device dimensity-9300 or dimensity-9400 (`llama-mobile devices`)")

    def partitioners(self, target: Target) -> list:
        from executorch.backends.mediatek.partitioner import NeuropilotPartitioner
        from executorch.exir.backend.compile_spec_schema import CompileSpec

        return [NeuropilotPartitioner([CompileSpec("platform-config", target.options.chip.encode())])]


register(NeuropilotBackend())
