"""Prequantized inputs: a GGUF's Q8_0 / Q4_0 weights reach the program as the file's own integers and scales."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from llama_mobile.core.errors import CheckpointError, UsageError
from llama_mobile.export.checkpoint import load_checkpoint
from llama_mobile.export.embedded import embedded_checkpoint
from llama_mobile.export.gguf_loader import open_gguf
from llama_mobile.export.loaded import PrequantizedTensor
from llama_mobile.export.prequantized import check_prequantized
from llama_mobile.jobs.export_job import ExportRequest, run_export
from llama_mobile.quantize.prequantized import GroupLinear, intx_tensor

TINY_SHAPES = {"dim": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128}
_ARCH_KEYS = {"llama.embedding_length": "dim", "llama.block_count": "n_layers",
              "llama.attention.head_count": "n_heads", "llama.attention.head_count_kv": "n_kv_heads",
              "llama.feed_forward_length": "ffn_hidden"}


def write_gguf_like(source: Path, destination: Path, kinds, tensors: dict[str, np.ndarray] | None = None,
                    shapes: dict | None = None, seed: int = 0) -> Path:
    """A GGUF with `source`'s header (tokenizer, RoPE, specials) and its tensors (or random ones of the
    `shapes` given) written as `kinds`: a GGUF type name, or {GGUF tensor name: type} (default Q4_0)."""
    import gguf

    from llama_mobile.export.gguf_loader import open_gguf

    reader = open_gguf(source)
    writer = gguf.GGUFWriter(str(destination), "llama")
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = field.contents()
        if shapes and field.name in _ARCH_KEYS:
            value = shapes[_ARCH_KEYS[field.name]]
        writer.add_key_value(field.name, value, field.types[0],
                             sub_type=field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    if tensors is None:
        tensors = {}
        generator = np.random.default_rng(seed)
        for tensor in reader.tensors:
            shape = tuple(int(d) for d in reversed(tensor.shape))
            if shapes:
                vocab = shape[0] if tensor.name == "token_embd.weight" else None
                shape = _tiny_shape(tensor.name, shapes, vocab)
                if shape is None:
                    continue
                tensors[tensor.name] = (1.0 + 0.1 * generator.standard_normal(shape) if len(shape) == 1
                                        else 0.08 * generator.standard_normal(shape)).astype(np.float32)
            else:
                tensors[tensor.name] = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
    for name, values in tensors.items():
        kind = (kinds if isinstance(kinds, str) else kinds.get(name, "Q4_0")) if values.ndim == 2 else "F32"
        if kind == "F32":
            writer.add_tensor(name, values.astype(np.float32))
        else:
            qtype = gguf.GGMLQuantizationType[kind]
            writer.add_tensor(name, gguf.quants.quantize(values.astype(np.float32), qtype), raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return destination


def _tiny_shape(name: str, s: dict, vocab: int | None):
    head = s["dim"] // s["n_heads"]
    if name.startswith("blk."):
        block = int(name.split(".")[1])
        if block >= s["n_layers"]:
            return None
        part = name.split(".", 2)[2]
        return {"attn_norm.weight": (s["dim"],), "ffn_norm.weight": (s["dim"],),
                "attn_q.weight": (s["dim"], s["dim"]), "attn_k.weight": (s["n_kv_heads"] * head, s["dim"]),
                "attn_v.weight": (s["n_kv_heads"] * head, s["dim"]), "attn_output.weight": (s["dim"], s["dim"]),
                "ffn_gate.weight": (s["ffn_hidden"], s["dim"]), "ffn_up.weight": (s["ffn_hidden"], s["dim"]),
                "ffn_down.weight": (s["dim"], s["ffn_hidden"])}[part]
    return {"token_embd.weight": (vocab, s["dim"]), "output_norm.weight": (s["dim"],),
            "output.weight": (vocab, s["dim"])}.get(name)


@pytest.fixture(scope="module")
def tiny_ggufs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prequantized")
    source = embedded_checkpoint("smollm2-135m-instruct")
    out = {kind: write_gguf_like(source, folder / f"tiny-{kind}.gguf", kind, shapes=TINY_SHAPES, seed=1)
           for kind in ("Q4_0", "Q8_0")}
    out["mixed"] = write_gguf_like(source, folder / "tiny-mixed.gguf",
                                   {"token_embd.weight": "Q8_0"}, shapes=TINY_SHAPES, seed=1)  # llama.cpp's Q4_0 layout
    out["Q4_1"] = write_gguf_like(source, folder / "tiny-Q4_1.gguf", {"token_embd.weight": "Q4_1"},
                                  shapes=TINY_SHAPES, seed=1)
    return out


def _gguf_blocks(path: Path) -> dict:
    """{GGUF name: (int8 values, float32 scales)} decoded independently of the loader (gguf-py's layout)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out = {}
    for tensor in reader.tensors:
        kind = tensor.tensor_type.name
        if kind not in ("Q4_0", "Q8_0"):
            continue
        rows = int(tensor.shape[1])
        values = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(rows, -1)
        blocks = np.asarray(tensor.data).reshape(-1, 34 if kind == "Q8_0" else 18)
        scale = blocks[:, :2].copy().view(np.float16).astype(np.float32).reshape(rows, -1)
        q = np.round(values.reshape(rows, -1, 32) / np.where(scale == 0, 1, scale)[..., None]).reshape(rows, -1)
        out[tensor.name] = (q.astype(np.int8), scale)
    return out


@pytest.mark.parametrize("kind", ["Q4_0", "Q8_0"])
def test_loader_keeps_the_integers_and_scales(tiny_ggufs, kind):
    loaded = load_checkpoint("llama", tiny_ggufs[kind])
    assert loaded.quantization["kept"] and loaded.quantization["tensor_types"] == {kind: 15}
    blocks = _gguf_blocks(tiny_ggufs[kind])
    assert set(loaded.prequantized) == {"tok_embeddings.weight", *(f"layers.{i}.{n}.weight" for i in range(2)
                                        for n in ("attention.wq", "attention.wk", "attention.wv", "attention.wo",
                                                  "feed_forward.w1", "feed_forward.w2", "feed_forward.w3"))}
    record = loaded.prequantized["layers.1.feed_forward.w2.weight"]
    q, scale = blocks["blk.1.ffn_down.weight"]
    assert record.bits == (4 if kind == "Q4_0" else 8) and record.group_size == 32 and record.source == kind
    assert torch.equal(record.qdata, torch.from_numpy(q)) and torch.equal(record.scale, torch.from_numpy(scale))
    for name, record in loaded.prequantized.items():  # the float reference is exactly integers x scales
        assert torch.equal(record.dequantize(), loaded.state_dict[name]), name
    low = -8 if kind == "Q4_0" else -128
    assert all(int(r.qdata.min()) >= low for r in loaded.prequantized.values())


def test_q4_0_is_torchaos_symmetric_int4_grid():
    """Q4_0 stores value + 8 with an fp16 scale: the same integers and scale as torchao's symmetric int4
    [-8, 7] with that scale, and torchao dequantizes them to gguf-py's floats bit for bit."""
    import gguf

    values = np.random.default_rng(3).standard_normal((8, 64)).astype(np.float32)
    blocks = gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q4_0)
    floats = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_0)

    class Tensor:
        data, shape, tensor_type = blocks, (64, 8), None
    from llama_mobile.export.prequantized import gguf_block_record

    record = gguf_block_record(Tensor, "Q4_0")
    assert int(record.qdata.min()) >= -8 and int(record.qdata.max()) <= 7
    weight = intx_tensor(record.qdata, record.scale, 4, 32, dynamic=True)
    assert weight.target_dtype == torch.int4
    assert torch.equal(weight.dequantize(), torch.from_numpy(floats))


@pytest.mark.parametrize("bits", [4, 8])
def test_group_linear_is_exact(bits):
    """Negative and zero scales, and int8 groups, held as int4 groups with positive scales + group sums."""
    generator = torch.Generator().manual_seed(0)
    low, high = (-8, 8) if bits == 4 else (-128, 128)
    qdata = torch.randint(low, high, (16, 64), generator=generator, dtype=torch.int8)
    scale = (torch.rand(16, 2, generator=generator) - 0.5) * 0.02
    scale[3, 1] = 0
    split = GroupLinear(qdata, scale, bits, 32)
    for part in split.parts:
        assert int(part.weight.qdata.min()) >= -8 and int(part.weight.qdata.max()) <= 7
        assert bool((part.weight.scale > 0).all())
    weight = qdata.float() * scale.repeat_interleave(32, dim=1)
    torch.testing.assert_close(split.dense(), weight, rtol=1e-6, atol=1e-7)  # sums of exact parts
    x = torch.randn(3, 64, generator=generator)
    plain = torch.nn.functional.linear
    sums = x.unflatten(-1, (-1, 32)).sum(-1)
    exact = sum(plain(x, p.weight.dequantize()) for p in split.parts) + plain(sums, split.offset.weight)
    torch.testing.assert_close(exact, x @ weight.T, rtol=1e-5, atol=1e-5)  # float sums in another order


def _program_state(bundle: Path):
    manifest = json.loads((bundle / "manifest.json").read_text())
    return manifest


@pytest.mark.parametrize("kind", ["Q4_0", "Q8_0", "mixed"])
def test_gguf_exports_its_own_integers(custom_ops, tiny_ggufs, tmp_path, kind):
    from llama_mobile.export.model import skeleton
    from llama_mobile.export.stream_build import fill_streaming
    from llama_mobile.quantize.prequantized import PrequantizedQuantizer

    loaded = load_checkpoint("llama", tiny_ggufs[kind])
    records = dict(loaded.prequantized)
    model = skeleton(loaded.architecture, 64)
    quantizer = PrequantizedQuantizer(model, records, tied=loaded.architecture.tied_embeddings)
    fill_streaming(model, loaded.state_dict, quantize_part=quantizer.quantize)
    quantizer.finish()
    # bit for bit: the torchao tensors hold the GGUF's integers and scales
    blocks = _gguf_blocks(tiny_ggufs[kind])
    embedding = model.tok_embeddings.weight
    q, scale = blocks["token_embd.weight"]
    assert torch.equal(embedding.qdata, torch.from_numpy(q)) and torch.equal(embedding.scale, torch.from_numpy(scale))
    wq = model.layers[0].attention.wq
    q, scale = blocks["blk.0.attn_q.weight"]
    # XNNPACK's form of the same integers: positive scales, int4 parts, group sums
    assert isinstance(wq, GroupLinear)
    assert torch.equal(wq.dense(), torch.from_numpy(q).float() * torch.from_numpy(scale).repeat_interleave(32, dim=1))
    positive = torch.from_numpy(scale) > 0
    if kind == "Q8_0":
        assert torch.equal((16 * wq.parts[0].weight.qdata + wq.parts[1].weight.qdata + 8)[positive.repeat_interleave(32, 1)],
                           torch.from_numpy(q)[positive.repeat_interleave(32, 1)])
    else:
        assert torch.equal(wq.parts[0].weight.qdata[positive.repeat_interleave(32, 1)],
                           torch.from_numpy(q)[positive.repeat_interleave(32, 1)])
        assert torch.equal(wq.parts[0].weight.scale, torch.from_numpy(scale).abs())
    assert all(p.weight.target_dtype == torch.int4 and p.weight.activation_quantization == "int8_asym_per_token"
               for p in wq.parts)

    result = run_export(ExportRequest(model="llama", checkpoint=tiny_ggufs[kind], recipe="8da4w-mixed",
                                      recipe_explicit=False, target="xnnpack", output_dir=tmp_path, context=64,
                                      positions=48))
    manifest = _program_state(result.bundle)
    assert manifest["recipe"]["name"] == "as-published"
    assert manifest["model"]["source"]["quantization"]["kept"] is True
    metrics = result.parity["metrics"]
    assert result.parity["passed"] and metrics["top1_agreement"] >= 0.9 and metrics["kl_mean"] < 0.01, metrics


def test_requantize_restores_the_recipe_path(custom_ops, tiny_ggufs, tmp_path):
    request = dict(model="llama", checkpoint=tiny_ggufs["Q4_0"], target="xnnpack", output_dir=tmp_path,
                   context=64, positions=16, validate=False)
    with pytest.raises(UsageError, match="would requantize"):
        run_export(ExportRequest(recipe="8da4w", **request))
    result = run_export(ExportRequest(recipe="8da4w", requantize=True, **request))
    manifest = _program_state(result.bundle)
    assert manifest["recipe"]["name"] == "8da4w"
    assert manifest["model"]["source"]["quantization"]["kept"] is False
    assert not any("prequantized" in c for c in manifest["recipe"]["torchao_configs"].values())


def test_each_matrix_is_kept_or_quantized_on_its_own(custom_ops, tiny_ggufs, tmp_path):
    """A Q4_1 token_embd beside Q4_0 blocks (llama-quantize often writes a K-quant or float embedding beside
    Q4_0): the Q4_0 matrices are kept, the embedding is quantized from its floats by the as-published
    recipe's embedding scheme, and the export says which type went to which scheme."""
    from llama_mobile.core.progress import Progress
    from llama_mobile.jobs.export_job import STAGES

    loaded = load_checkpoint("llama", tiny_ggufs["Q4_1"])
    assert "tok_embeddings.weight" not in loaded.prequantized
    assert loaded.prequantized and all(r.source == "Q4_0" for r in loaded.prequantized.values())
    assert loaded.quantization["kept"] is True and loaded.quantization["requantized"] == ["tok_embeddings.weight"]
    assert "minimum" in loaded.quantization["nearest"]["Q4_1"]
    notes = []
    result = run_export(ExportRequest(model="llama", checkpoint=tiny_ggufs["Q4_1"], recipe="8da4w-mixed",
                                      recipe_explicit=False, target="xnnpack", output_dir=tmp_path, context=64,
                                      positions=48), Progress(STAGES, emit=notes.append))
    assert any("1 others quantized from their float values (Q4_1 -> nearest" in str(n) for n in notes), notes
    manifest = _program_state(result.bundle)
    assert manifest["recipe"]["name"] == "as-published"
    configs = manifest["recipe"]["torchao_configs"]
    assert any(c.get("prequantized") == "Q4_0" for c in configs.values())  # the blocks: the file's integers
    assert any(key.startswith("embedding:") and "prequantized" not in c for key, c in configs.items())
    assert result.parity["passed"]
    # an explicit recipe would requantize the kept ones: refused unless asked for
    with pytest.raises(UsageError, match="would requantize"):
        run_export(ExportRequest(model="llama", checkpoint=tiny_ggufs["Q4_1"], recipe="8da4w", target="xnnpack",
                                 output_dir=tmp_path / "explicit", context=64, validate=False))


def test_a_file_whose_blocks_do_not_map_is_requantized_whole(custom_ops, tiny_ggufs, tmp_path):
    """Q4_1 blocks (with a Q8_0 embedding, as the embedded SmolLM2 file has): the recipe path, whole."""
    from llama_mobile.core.progress import Progress
    from llama_mobile.jobs.export_job import STAGES

    source = embedded_checkpoint("smollm2-135m-instruct")
    embedded = load_checkpoint("smollm2-135m-instruct", None)
    assert embedded.prequantized == {} and embedded.quantization["kept"] is False
    assert "Q8_0" in embedded.quantization["tensor_types"]  # a kept type, but the blocks are Q4_1
    all_q4_1 = write_gguf_like(source, tmp_path / "q4_1.gguf", {"token_embd.weight": "Q8_0", **{
        t.name: "Q4_1" for t in open_gguf(source).tensors if t.name.startswith("blk.")}},
                               shapes=TINY_SHAPES, seed=1)
    loaded = load_checkpoint("llama", all_q4_1)
    assert loaded.prequantized == {} and loaded.quantization["kept"] is False
    notes = []
    result = run_export(ExportRequest(model="llama", checkpoint=all_q4_1, recipe="8da4w", target="xnnpack",
                                      output_dir=tmp_path, context=64, validate=False),
                        Progress(STAGES, emit=notes.append))
    assert any("Q4_1 -> nearest 8da4w g32" in str(n) and "requantized by recipe 8da4w" in str(n) for n in notes), notes
    manifest = _program_state(result.bundle)
    assert manifest["model"]["source"]["quantization"]["nearest"]["Q4_1"].startswith("8da4w g32")
    with pytest.raises(UsageError, match="as-published"):
        run_export(ExportRequest(model="llama", checkpoint=all_q4_1, recipe="as-published",
                                 target="xnnpack", output_dir=tmp_path, context=64, validate=False))


def test_damaged_records_are_one_line_errors(tmp_path):
    state = {"w": torch.zeros(4, 64)}
    good = PrequantizedTensor(torch.zeros(4, 64, dtype=torch.int8), torch.ones(4, 2), 4, 32, "int4")
    check_prequantized({"w": good}, state, tmp_path)
    for bad, message in (
        (PrequantizedTensor(good.qdata, torch.ones(4, 4), 4, 32, "int4"), "expected float \\[4, 2\\]"),
        (PrequantizedTensor(good.qdata, torch.ones(4, 2), 4, 48, "int4"), "group size 48"),
        (PrequantizedTensor(good.qdata + 9, torch.ones(4, 2), 4, 32, "int4"), "4-bit range"),
        (PrequantizedTensor(good.qdata.float(), torch.ones(4, 2), 4, 32, "int4"), "expected int8"),
    ):
        with pytest.raises(CheckpointError, match=message) as error:
            check_prequantized({"w": bad}, state, tmp_path)
        assert "\n" not in str(error.value.args[0])


# ---- Meta's quantized Llama 3.2 (SpinQuant_INT4_EO8 / QLORA_INT4_EO8) -------------------------------------

def _meta_tiny():
    import dataclasses

    from tests.checkpoints import TINY

    return dataclasses.replace(TINY, vocab_size=512)  # the tiny tiktoken file: 256 bytes + 256 specials


META_TINY = _meta_tiny()


def write_meta_quantized(folder: Path, kind: str, seed: int = 0, group: int = 32, arch=META_TINY,
                         tokenizer: Path | None = None) -> Path:
    """A checkpoint (tiny unless ``arch`` says otherwise) in the layout ExecuTorch's pre-quantization modules
    load (test_meta_layout_is_executorchs checks it against them): int8 holding int4 + float32 scales
    [out, in / group] + zeros for block linears, int8 + scales [rows] for the embedding and the output (Meta
    stores a tied matrix twice), bf16 LoRA adaptors (QLoRA)."""
    from tests.checkpoints import random_state_dict, write_meta

    write_meta(folder, arch, {}, tokenizer=tokenizer)
    params = json.loads((folder / "params.json").read_text())
    params["quantization_args"] = {"group_size": group, "quantize_embedding": True,
                                   **({"spinquant": True} if kind == "spinquant" else {})}
    if kind == "qlora":
        params["lora_args"] = {"rank": 16, "scale": 2.0}
    (folder / "params.json").write_text(json.dumps(params))
    generator = torch.Generator().manual_seed(seed + 11)
    checkpoint = {}
    state = random_state_dict(arch, seed=seed)
    if arch.tied_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    for name, weight in state.items():
        base = name.removesuffix(".weight")
        if weight.dim() == 1:
            checkpoint[name] = weight.to(torch.bfloat16)
        elif name.startswith("layers."):
            rows, columns = weight.shape
            scale = weight.reshape(rows, -1, 32).abs().amax(-1) / 7.5
            checkpoint[name] = (weight / scale.repeat_interleave(32, 1)).round().clamp(-8, 7).to(torch.int8)
            checkpoint[base + ".scales"] = scale
            checkpoint[base + ".zeros"] = torch.zeros_like(scale)
            if kind == "qlora":
                checkpoint[base + ".adaptor.A.weight"] = (0.05 * torch.randn(16, columns, generator=generator)).bfloat16()
                checkpoint[base + ".adaptor.B.weight"] = (0.05 * torch.randn(rows, 16, generator=generator)).bfloat16()
        else:
            scale = weight.abs().amax(1) / 127
            checkpoint[name] = (weight / scale[:, None]).round().to(torch.int8)
            checkpoint[base + ".scales"] = scale
            if name == "output.weight":
                checkpoint[base + ".zeros"] = torch.zeros_like(scale)
    torch.save(checkpoint, folder / "consolidated.00.pth")
    return folder


@pytest.fixture(scope="module")
def meta_quantized(tmp_path_factory):
    folder = tmp_path_factory.mktemp("meta-quantized")
    return {kind: write_meta_quantized(folder / kind, kind) for kind in ("spinquant", "qlora")}


def _executorch_model(folder: Path):
    """ExecuTorch's own eager modules (pre_quantization.py, lora.py) inside the same architecture, loaded
    strictly from the checkpoint: the layout is theirs, and the model is the reference of these tensors."""
    from executorch.examples.models.llama.source_transformation.lora import (
        transform_linear_for_lora_after_quantization,
    )
    from executorch.examples.models.llama.source_transformation.pre_quantization import (
        sanitize_checkpoint_from_pre_quantization,
        transform_embedding_for_pre_quantization,
        transform_linear_for_pre_quantization,
        transform_output_linear_for_pre_quantization,
    )

    from llama_mobile.export.model import build_model
    from tests.checkpoints import random_state_dict

    checkpoint = torch.load(folder / "consolidated.00.pth", weights_only=True)
    params = json.loads((folder / "params.json").read_text())
    model = build_model(META_TINY, 64, random_state_dict(META_TINY))
    model = transform_output_linear_for_pre_quantization(model, checkpoint, torch.float32)
    model = transform_linear_for_pre_quantization(model, checkpoint, params["quantization_args"]["group_size"],
                                                  torch.float32)
    model = transform_embedding_for_pre_quantization(model, checkpoint, torch.float32, 8, None)
    if "lora_args" in params:
        model = transform_linear_for_lora_after_quantization(model, checkpoint, params["lora_args"]["rank"])
    sanitize_checkpoint_from_pre_quantization(checkpoint)
    floats = {k: v.float() for k, v in checkpoint.items() if v.dtype == torch.bfloat16 and ".adaptor." not in k}
    missing, unexpected = model.load_state_dict({**checkpoint, **floats}, strict=False)
    assert not unexpected, unexpected
    assert all("cache" in k or "rope" in k or "freqs" in k for k in missing), missing
    for module in model.modules():  # the adaptor in float32 (ExecuTorch's bf16 adaptor needs a bf16 model)
        if hasattr(module, "adaptor"):
            module.adaptor.float()
    if params["quantization_args"].get("spinquant"):  # what --use_spin_quant native injects before w2
        for layer in model.layers:
            w2 = layer.feed_forward.w2
            layer.feed_forward.w2 = type("R4", (torch.nn.Module,), {
                "forward": lambda self, x: self.inner(torch.ops.llama.fast_hadamard_transform(x))})()
            layer.feed_forward.w2.inner = w2
    return model.eval()


@pytest.mark.parametrize("kind", ["spinquant", "qlora"])
def test_meta_quantized_exports_its_own_integers(custom_ops, meta_quantized, tmp_path, kind):
    from llama_mobile.export.model import skeleton
    from llama_mobile.export.stream_build import fill_streaming
    from llama_mobile.quantize.lora import LoraLinear
    from llama_mobile.quantize.prequantized import HadamardInput, PrequantizedQuantizer
    from llama_mobile.runtime_harness.metrics import compare_logits
    from llama_mobile.runtime_harness.program import Program

    folder = meta_quantized[kind]
    loaded = load_checkpoint("llama", folder)
    info = loaded.quantization
    assert info["scheme"] == ("Meta SpinQuant INT4 EO8" if kind == "spinquant" else "Meta QAT+LoRA INT4 EO8")
    assert info["requantizable"] is False and info["spinquant"] == (kind == "spinquant")
    assert info["lora_rank"] == (16 if kind == "qlora" else 0)
    raw = torch.load(folder / "consolidated.00.pth", weights_only=True)
    model = skeleton(loaded.architecture, 64)
    quantizer = PrequantizedQuantizer(model, dict(loaded.prequantized), tied=loaded.architecture.tied_embeddings)
    fill_streaming(model, loaded.state_dict, quantize_part=quantizer.quantize)
    quantizer.finish()
    # bit for bit: the torchao tensors hold the checkpoint's integers and scales
    for name in ("layers.0.attention.wq", "layers.1.feed_forward.w2", "output", "tok_embeddings"):
        module = model.get_submodule(name)
        while isinstance(module, (HadamardInput, LoraLinear)):
            module = module.base
        assert torch.equal(module.weight.qdata, raw[name + ".weight"]), name
        assert torch.equal(module.weight.scale.reshape(raw[name + ".scales"].shape), raw[name + ".scales"]), name
    w2 = model.layers[0].feed_forward.w2
    assert isinstance(w2, HadamardInput) == (kind == "spinquant")
    assert isinstance(model.layers[0].attention.wq, LoraLinear) == (kind == "qlora")

    result = run_export(ExportRequest(model="llama", checkpoint=folder, recipe="8da4w-mixed", recipe_explicit=False,
                                      target="xnnpack", output_dir=tmp_path, context=64, positions=48))
    manifest = json.loads((result.bundle / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "as-published"
    assert manifest["model"]["source"]["quantization"]["scheme"] == info["scheme"]
    assert result.parity["passed"], result.parity
    # the program against ExecuTorch's own eager modules of the same checkpoint
    tokens = [1, 5, 9, 200, 17, 3, 44, 101, 7, 250, 12, 90]
    reference = _executorch_model(folder)
    expected = torch.stack([reference(torch.tensor([[t]]), torch.tensor([i])).reshape(-1, 512)[-1]
                            for i, t in enumerate(tokens)])
    got = Program(result.bundle / "model.pte", trusted=True).logits_per_position(tokens)
    metrics = compare_logits(expected.float(), got, tokens)
    assert metrics.top1_agreement >= 0.9 and metrics.kl_mean < 0.01, metrics


def test_meta_quantized_refuses_requantizing(custom_ops, meta_quantized, tmp_path):
    request = dict(model="llama", checkpoint=meta_quantized["qlora"], target="xnnpack", output_dir=tmp_path,
                   context=64, validate=False)
    with pytest.raises(UsageError, match="would requantize") as error:
        run_export(ExportRequest(recipe="8da4w", **request))
    assert "--requantize" not in str(error.value)
    with pytest.raises(UsageError, match="cannot be requantized"):
        run_export(ExportRequest(recipe="8da4w", requantize=True, recipe_explicit=False, **request))


def _damage(folder: Path, tmp_path: Path, edit) -> Path:
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(folder, copy)
    checkpoint = torch.load(copy / "consolidated.00.pth", weights_only=True)
    params = json.loads((copy / "params.json").read_text())
    edit(checkpoint, params)
    torch.save(checkpoint, copy / "consolidated.00.pth")
    (copy / "params.json").write_text(json.dumps(params))
    return copy


@pytest.mark.parametrize("edit, message", [
    (lambda c, p: c.pop("layers.1.attention.wk.scales"), "has no 'layers.1.attention.wk.scales'"),
    (lambda c, p: p["quantization_args"].update(group_size=64), r"expected \[64, 1\] \(group size 64"),
    (lambda c, p: c.update({"layers.0.feed_forward.w1.scales": torch.ones(128, 3)}), r"shape \[128, 3\]"),
    (lambda c, p: c.update({"output.scales": torch.ones(511)}), r"output.scales has shape \[511\]"),
    (lambda c, p: p["quantization_args"].update(group_size=48), "group_size 48 is not one of"),
    (lambda c, p: c.pop("layers.0.attention.wq.adaptor.B.weight"), "half a LoRA adaptor"),
])
def test_meta_quantized_damage_is_one_line(meta_quantized, tmp_path, edit, message):
    damaged = _damage(meta_quantized["qlora"], tmp_path, edit)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint("llama", damaged)
    assert "\n" not in str(error.value)


def test_hadamard_rows_is_executorchs_transform(custom_ops):
    from llama_mobile.export.loaded import hadamard_rows

    x = torch.randn(5, 128)
    torch.testing.assert_close(hadamard_rows(x), torch.ops.llama.fast_hadamard_transform(x), rtol=0, atol=1e-6)


def test_cli_keeps_by_default_and_requantizes_on_request(tiny_ggufs, tmp_path):
    import subprocess
    import sys

    def export(*args):
        return subprocess.run([sys.executable, "-m", "llama_mobile.cli", "export", "--model", "llama", "--checkpoint",
                               str(tiny_ggufs["Q4_0"]), "-o", str(tmp_path), "--context", "64", "--no-validate",
                               *args], capture_output=True, text=True, timeout=600, cwd=Path(__file__).parent.parent)

    refused = export("--recipe", "8da4w")
    assert refused.returncode == 2 and "would requantize" in refused.stderr and "--requantize" in refused.stderr
    done = export("--recipe", "8da4w", "--requantize")
    assert done.returncode == 0, done.stderr
    assert "requantized by recipe 8da4w" in done.stdout + done.stderr
    manifest = json.loads((tmp_path / "llama-8da4w-xnnpack" / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == "8da4w" and manifest["model"]["source"]["quantization"]["kept"] is False


@pytest.mark.parametrize("bits, group, dynamic", [(4, 32, True), (8, 0, True), (8, 32, False), (4, 32, False)])
def test_fed_tensor_is_the_one_torchao_makes(bits, group, dynamic):
    """The tensor built from integers and scales is torchao's own for that scheme (so lowering is unchanged):
    quantize with the recipe path's config, feed its qdata/scale back, compare every field."""
    from torchao.quantization import quantize_

    from llama_mobile.quantize.apply import torchao_config
    from llama_mobile.quantize.recipe import LayerQuant

    scheme = ("8da4w" if bits == 4 else "8da8w") if dynamic else ("4w" if bits == 4 else "8w")
    layer = torch.nn.Linear(64, 16, bias=False) if dynamic else torch.nn.Embedding(16, 64)
    quantize_(layer, torchao_config(LayerQuant(scheme, group), embedding=not dynamic),
              filter_fn=lambda m, fqn: True)
    made = layer.weight
    fed = intx_tensor(made.qdata, made.scale, bits, group or 64, dynamic=dynamic)
    assert type(fed) is type(made)
    for field in ("qdata", "scale", "zero_point"):
        assert torch.equal(getattr(fed, field), getattr(made, field)), field
        assert getattr(fed, field).dtype == getattr(made, field).dtype, field
    for field in ("target_dtype", "block_size", "dtype", "activation_quantization"):
        assert getattr(fed, field) == getattr(made, field), field


@pytest.mark.slow
@pytest.mark.parametrize("kind, published_mib", [("spinquant", 1083), ("qlora", 1127)])
def test_meta_quantized_llama32_1b_shapes(custom_ops, tmp_path, kind, published_mib):
    """Random weights in Meta's published layout with the real 1B shapes and tokenizer: exported as published
    (its own integers, no requantizing), and no larger than Meta's own .pte of that checkpoint."""
    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.core.presets import MODEL_PRESETS
    from llama_mobile.runtime_harness.program import Program
    from tests.checkpoints import llama3_tokenizer_model

    arch = MODEL_PRESETS["llama3.2-1b"].architecture
    folder = write_meta_quantized(tmp_path / kind, kind, arch=arch, tokenizer=llama3_tokenizer_model())
    result = run_export(ExportRequest(model="llama3.2-1b", checkpoint=folder, recipe="8da4w-mixed-gptq",
                                      recipe_explicit=False, target="xnnpack", output_dir=tmp_path / "out",
                                      validate=False))
    manifest = result.manifest.to_dict()
    mib = sum(manifest["files"][name]["size"] for name in ("model.pte", "model.ptd") if name in manifest["files"]) / 2**20
    print(f"llama3.2-1b {kind}: {mib:.0f} MiB (Meta's published .pte: {published_mib} MiB), "
          f"export {sum(result.seconds.values()):.0f}s, peak RSS {result.peak_rss_bytes / 2**30:.2f} GiB")
    assert manifest["recipe"]["name"] == "as-published"
    assert mib < published_mib
    logits = Program.of(verify_bundle(result.bundle)).forward(torch.tensor([[128000, 9906]]), 0)
    assert logits.shape == (1, 128256) and torch.isfinite(logits).all()
