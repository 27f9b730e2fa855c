"""Qualcomm QNN (Hexagon HTP NPU) through ExecuTorch's QNN partitioner.

Needs Qualcomm's QNN SDK (QAIRT), which is not on PyPI. ExecuTorch's QNN code loads libQnnHtp.so and
libQnnSystem.so by bare name while lowering (and, with QNN_SDK_ROOT set, dlopens libQnnHtp.so by path to
read its version), and a missing library aborts the whole process rather than raising: so the files
are checked here, before any weight is read.
"""
from __future__ import annotations

import os
from pathlib import Path

from llama_mobile.core.errors import ExportError
from llama_mobile.core.targets import Target
from llama_mobile.export.backends.base import Backend, register

SDK_VERSION = "2.37"  # the QAIRT release ExecuTorch 1.5.1's QNN backend is built against
HOST_LIB_DIR = "lib/x86_64-linux-clang"
# Loaded on the host during lowering: the HTP backend, the system library (context binaries) and the
# HTP graph preparer the backend loads to compile offline.
HOST_LIBS = ("libQnnHtp.so", "libQnnSystem.so", "libQnnHtpPrepare.so")
INSTALL = (f"install Qualcomm AI Runtime SDK (QAIRT) {SDK_VERSION} from Qualcomm's software center, then "
           f"export QNN_SDK_ROOT=/path/to/qairt/{SDK_VERSION}.x and "
           f"LD_LIBRARY_PATH=$QNN_SDK_ROOT/{HOST_LIB_DIR}:$LD_LIBRARY_PATH")


def _extension_present() -> bool:
    """ExecuTorch's QNN python extension (PyQnnManagerAdaptor), found without importing executorch."""
    from importlib.util import find_spec

    spec = find_spec("executorch")
    return any(Path(root, "backends/qualcomm/python").glob("PyQnnManagerAdaptor*.so")
               for root in (spec.submodule_search_locations or []) if spec) if spec else False


def sdk_problem(environ=None) -> str | None:
    """Why the QNN target cannot lower here, or None. Cheap: looks at files and variables only."""
    environ = os.environ if environ is None else environ
    if not _extension_present():
        return "this executorch wheel has no QNN python extension (PyQnnManagerAdaptor)"
    root = environ.get("QNN_SDK_ROOT", "")
    if not root:
        return "QNN_SDK_ROOT is not set"
    lib_dir = Path(root) / HOST_LIB_DIR
    missing = [name for name in HOST_LIBS if not (lib_dir / name).is_file()]
    if missing:
        return f"QNN_SDK_ROOT={root} lacks {HOST_LIB_DIR}/{', '.join(missing)}"
    search = [Path(p).resolve() for p in environ.get("LD_LIBRARY_PATH", "").split(":") if p]
    if lib_dir.resolve() not in search:
        return f"{lib_dir} is not on LD_LIBRARY_PATH (the QNN libraries are loaded by name)"
    return None


def compile_specs(chip: str) -> list:
    from executorch.backends.qualcomm.serialization.qc_schema import QcomChipset
    from executorch.backends.qualcomm.utils.utils import (
        generate_htp_compiler_spec,
        generate_qnn_executorch_compiler_spec,
    )

    return generate_qnn_executorch_compiler_spec(soc_model=QcomChipset[chip],
                                                 backend_options=generate_htp_compiler_spec(use_fp16=False))


class QnnBackend(Backend):
    name = "qnn"
    model_options = {"attention_kernel": "sdpa"}  # plain ops: HTP has no kernel for ExecuTorch's llama ops
    quantizes_whole_graph = True
    needs_chip = True

    def sdk_problem(self) -> str | None:
        return sdk_problem()

    def check_environment(self, target: Target) -> None:
        problem = sdk_problem()
        if problem:
            raise ExportError(f"target {target.name} needs Qualcomm's QNN SDK (not on PyPI): {problem}", fix=INSTALL)
        if not target.options.chip:
            raise ExportError(f"target {target.name} has no Snapdragon SoC", fix="pass --device snapdragon-8-gen-3 "
                              "or snapdragon-8-elite (`llama-mobile devices`)")

    def partitioners(self, target: Target) -> list:
        from executorch.backends.qualcomm.partition.qnn_partitioner import QnnPartitioner

        return [QnnPartitioner(compile_specs(target.options.chip))]


register(QnnBackend())
