"""Vulkan (Adreno / Mali / Immortalis GPUs) through ExecuTorch's Vulkan partitioner. Experimental.

ExecuTorch's Vulkan backend carries its own kernels for the llama custom ops (sdpa_with_kv_cache,
update_cache), so the model keeps them: with them the whole graph is one delegate, while the plain-SDPA
variant fails in the partitioner's passes.
"""
from __future__ import annotations

from llama_mobile.core.targets import Target
from llama_mobile.export.backends.base import Backend, register


class VulkanBackend(Backend):
    """Nothing to check on the host (the compiler ships in the executorch wheel); running the program needs
    a device with a Vulkan 1.1 GPU."""

    name = "vulkan"

    def partitioners(self, target: Target) -> list:
        from executorch.backends.vulkan.partitioner.vulkan_partitioner import VulkanPartitioner

        return [VulkanPartitioner()]


register(VulkanBackend())
