"""The patches of third-party private APIs (core/patches.py): each listed with the test that proves its bytes,
all off with one switch, and each off, with one warning, on a library version it was not verified against,
where the library's own path runs and gives the same bytes."""
import ast
import dataclasses
import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llama_mobile.core import patches

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "llama_mobile", ROOT / "export", ROOT / "quantize", ROOT / "runtime_harness"]


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(patches, "_warned", set())
    monkeypatch.delenv(patches.ENVIRONMENT, raising=False)


def another_version_of(*libraries: str):
    real = patches.installed_version
    return lambda distribution: "99.0.0" if distribution in libraries else real(distribution)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == patches.__name__ and r.levelno == logging.WARNING]


def test_every_patch_names_an_existing_test_and_its_body_asks_the_table():
    for patch in patches.PATCHES.values():
        assert patch.verified and patch.patches and patch.proof, patch.name
        for node_id in patch.proof:
            file, _, test = node_id.partition("::")
            path = ROOT / file
            assert path.is_file(), f"{patch.name}: {file} does not exist"
            tests = {n.name for n in ast.parse(path.read_text()).body if isinstance(n, ast.FunctionDef)}
            assert test.split("[")[0] in tests, f"{patch.name}: no test {node_id}"
        package, _, rest = patch.where.removeprefix("llama_mobile.").partition(".")
        folder = ROOT / ("llama_mobile/" + package if package in ("core", "jobs", "cli") else package)
        source = (folder / (rest.replace(".", "/") + ".py")).read_text()
        assert f'patches.enabled("{patch.name}")' in source, f"{patch.name}: not looked up in {patch.where}"


def test_every_patch_in_the_code_is_listed():
    used = {name for folder in SOURCES for path in folder.rglob("*.py")
            for name in re.findall(r'patches\.(?:enabled|give_up)\("([^"]+)"', path.read_text())}
    assert used == set(patches.PATCHES)


def test_the_table_matches_the_installed_libraries():
    """A pin moved without re-verifying: the table must be updated (after running the proofs)."""
    for patch in patches.PATCHES.values():
        assert patches.version_mismatch(patch) is None, patch.name
        assert patches.enabled(patch.name)


def test_core_patches_stays_light():
    code = "import sys, llama_mobile.core.patches; print(sorted(m for m in ('torch', 'numpy', 'executorch', " \
           "'torchao', 'gguf') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_one_switch_turns_every_patch_off(monkeypatch, caplog):
    monkeypatch.setenv(patches.ENVIRONMENT, "off")
    assert not any(patches.enabled(name) for name in patches.PATCHES)
    monkeypatch.delenv(patches.ENVIRONMENT)
    with patches.off():
        with patches.off():
            assert not any(patches.enabled(name) for name in patches.PATCHES)
        assert not patches.enabled("fused-edge-passes")
    assert all(patches.enabled(name) for name in patches.PATCHES)
    assert warnings_of(caplog) == []  # switched off on purpose: nothing to warn about


def test_environment_switch_leaves_every_library_alone(monkeypatch):
    import gguf.gguf_reader
    from executorch.backends.xnnpack import _passes
    from executorch.exir.program import _program
    from torch.export import ExportedProgram
    from torchao.quantization.quantize_.workflows.intx import (
        intx_unpacked_to_int8_tensor as intx,
    )

    from llama_mobile.core.targets import get_target
    from llama_mobile.export.gguf_loader import plain_array_mapping
    from llama_mobile.export.lower import lowering_context
    from llama_mobile.quantize.rowwise import rowwise_quantizers

    def state():
        return (ExportedProgram.run_decompositions, _program._get_aten_to_edge_passes, _program.OpReplacePass,
                _passes.XNNPACKPassManager.__init__, intx.quantize_affine, gguf.gguf_reader.np)

    stock = state()
    with lowering_context(get_target("xnnpack")), rowwise_quantizers(), plain_array_mapping():
        assert all(a is not b for a, b in zip(state(), stock))  # on by default: every one patched
    monkeypatch.setenv(patches.ENVIRONMENT, "off")
    with lowering_context(get_target("xnnpack")), rowwise_quantizers(), plain_array_mapping():
        assert state() == stock
    assert state() == stock


def test_another_version_switches_its_patches_off_with_one_warning(monkeypatch, caplog):
    monkeypatch.setattr(patches, "installed_version", another_version_of("executorch"))
    for _ in range(3):
        on = {name for name in patches.PATCHES if patches.enabled(name)}
    assert on == {"rowwise-quantizers", "gguf-plain-array-reader"}
    messages = warnings_of(caplog)
    assert len(messages) == len(patches.PATCHES) - 2  # once per patch, however often asked
    assert all("executorch 99.0.0 (verified against 1.5.1)" in m for m in messages)


def tiny_lowering(fast: bool = True):
    from llama_mobile.core.targets import get_target
    from llama_mobile.export.lower import lower, runner_metadata
    from llama_mobile.export.model import build_model
    from llama_mobile.quantize.apply import quantize_model
    from llama_mobile.quantize.recipe import load_recipe
    from tests.checkpoints import TINY, random_state_dict

    arch = dataclasses.replace(TINY, n_layers=1, tied_embeddings=True)
    model = build_model(arch, 32, random_state_dict(arch, seed=5))
    quantize_model(model, load_recipe("8da4w-mixed"), tied=True)
    metadata = runner_metadata(bos_id=1, eos_ids=(2,), context_len=32, max_seq_len=16,
                               vocab_size=arch.vocab_size, n_layers=arch.n_layers)
    metadata["enable_dynamic_shape"] = False  # a third quicker to lower; the dynamic one is in test_lowering_speed
    return lower(model, get_target("xnnpack"), metadata, 16, external_weights=True, fast=fast)


def test_lowering_on_another_executorch_runs_executorchs_own_path(custom_ops, monkeypatch, caplog):
    from executorch.backends.xnnpack import _passes
    from executorch.backends.xnnpack.xnnpack_preprocess import XnnpackBackend
    from executorch.exir.program import _program
    from torch.export import ExportedProgram

    from llama_mobile.core.targets import get_target
    from llama_mobile.export.lower import lowering_context

    caplog.set_level(logging.WARNING, logger="torch.__trace")  # torch's trace records, kept by caplog: 2x slower
    stock = tiny_lowering(fast=False)
    monkeypatch.setattr(patches, "installed_version", another_version_of("executorch"))
    originals = (ExportedProgram.run_decompositions, _program._get_aten_to_edge_passes, _program.OpReplacePass,
                 _passes.XNNPACKPassManager.__init__)
    with lowering_context(get_target("xnnpack")):
        assert (ExportedProgram.run_decompositions, _program._get_aten_to_edge_passes, _program.OpReplacePass,
                _passes.XNNPACKPassManager.__init__) == originals
        assert "copy_exported_program_for_preprocess" not in vars(XnnpackBackend)
    fallback = tiny_lowering()
    assert fallback.pte == stock.pte and bytes(fallback.weights) == bytes(stock.weights)
    assert fallback.delegated_calls == stock.delegated_calls > 0
    assert len(warnings_of(caplog)) == 4  # the four lowering patches, once each over two lowerings


def test_fused_edge_passes_fall_back_when_executorchs_passes_differ(monkeypatch, caplog):
    from executorch.exir import EdgeCompileConfig
    from executorch.exir.program import _program

    from llama_mobile.export.lower import fused_edge_passes

    stock = _program._get_aten_to_edge_passes
    monkeypatch.setattr(_program, "_get_aten_to_edge_passes", lambda config: (stock(config)[0][:-1], []))
    changed = _program._get_aten_to_edge_passes
    with fused_edge_passes():
        assert _program._get_aten_to_edge_passes is changed  # nothing patched, nothing half-fused
        assert _program.OpReplacePass.__name__ == "OpReplacePass"
        assert len(_program._get_aten_to_edge_passes(EdgeCompileConfig())[0]) == len(stock(EdgeCompileConfig())[0]) - 1
    assert len(warnings_of(caplog)) == 1 and "fused-edge-passes" in warnings_of(caplog)[0]


def test_rowwise_quantizers_on_another_torchao_run_torchaos_own(monkeypatch, caplog):
    import torch
    from torchao.quantization import quantize_
    from torchao.quantization.quantize_.workflows.intx import (
        intx_unpacked_to_int8_tensor as intx,
    )

    from llama_mobile.quantize import rowwise
    from llama_mobile.quantize.apply import torchao_config
    from llama_mobile.quantize.recipe import load_recipe

    weight = torch.randn(40, 64, generator=torch.Generator().manual_seed(6))
    config = torchao_config(load_recipe("8da4w").linear)

    def quantized(context):
        module = torch.nn.Linear(64, 40, bias=False)
        module.weight.data.copy_(weight)
        with context:
            quantize_(module, config, filter_fn=lambda m, fqn: True)
        return module.weight

    stock = quantized(patches.off())
    monkeypatch.setattr(patches, "installed_version", another_version_of("torchao"))
    originals = (intx.quantize_affine, intx.choose_qparams_affine, intx._choose_qparams_and_quantize_scale_only_hqq)
    with rowwise.rowwise_quantizers():
        assert (intx.quantize_affine, intx.choose_qparams_affine,
                intx._choose_qparams_and_quantize_scale_only_hqq) == originals
    fallback = quantized(rowwise.rowwise_quantizers())
    for field in ("qdata", "scale", "zero_point"):
        assert torch.equal(getattr(stock, field), getattr(fallback, field)), field
    assert len(warnings_of(caplog)) == 1 and "torchao 99.0.0" in warnings_of(caplog)[0]


@pytest.fixture
def tiny_gguf(tmp_path):
    """A GGUF with the fields the loader reads (a vocabulary array among them) and F32/F16/Q8_0 tensors."""
    import gguf
    import numpy as np

    path = tmp_path / "tiny.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_embedding_length(64)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_token_list([f"tok{i}" for i in range(500)])
    writer.add_token_scores([float(i) for i in range(500)])
    writer.add_token_types([1] * 500)
    generator = np.random.default_rng(7)
    writer.add_tensor("output_norm.weight", generator.standard_normal(64).astype(np.float32))
    writer.add_tensor("token_embd.weight", generator.standard_normal((8, 64)).astype(np.float16))
    q8 = gguf.quants.quantize(generator.standard_normal((4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q8_0)
    writer.add_tensor("output.weight", q8, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _contents(reader) -> tuple:
    fields = [(name, [int(t) for t in f.types], [bytes(p) for p in f.parts], f.data) for name, f in reader.fields.items()]
    tensors = [(t.name, int(t.tensor_type), tuple(int(d) for d in t.shape), bytes(t.data)) for t in reader.tensors]
    return fields, tensors


def test_gguf_reader_patch_reads_the_same_bytes(tiny_gguf):
    import numpy as np

    from llama_mobile.export.gguf_loader import open_gguf

    patched = open_gguf(tiny_gguf)
    with patches.off():
        stock = open_gguf(tiny_gguf)
    assert type(patched.data) is np.ndarray and isinstance(stock.data, np.memmap)  # both paths ran
    assert _contents(patched) == _contents(stock)
    assert len(patched.fields["tokenizer.ggml.tokens"].data) == 500


def test_gguf_reader_on_another_gguf_reads_through_its_memmap(tiny_gguf, monkeypatch, caplog):
    import numpy as np

    from llama_mobile.export.gguf_loader import open_gguf

    monkeypatch.setattr(patches, "installed_version", another_version_of("gguf"))
    reader = open_gguf(tiny_gguf)
    assert isinstance(reader.data, np.memmap)
    assert len(warnings_of(caplog)) == 1 and "gguf 99.0.0" in warnings_of(caplog)[0]
