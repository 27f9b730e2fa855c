"""LoRA adapters (export --adapter): one small program per adapter over the one base weights file, each
changing the logits exactly as merging the adapter into the weights does, and bad adapters refused before
any export work."""
import json
import math
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from llama_mobile.cli.main import main
from llama_mobile.core.errors import BundleError, CheckpointError, UsageError
from tests.checkpoints import PEFT_MODULES, TINY, peft_adapter_tensors, write_hf, write_peft_adapter
from tests.conftest import export_tiny

# q and k included: their B rows must follow the Meta row order of the model's q/k weights (RoPE).
TARGETS_ONE = ("attention.wq", "attention.wk", "attention.wv", "feed_forward.w2")
TARGETS_TWO = ("attention.wo", "feed_forward.w1", "feed_forward.w3")


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return {"one": write_peft_adapter(root / "one", TINY, rank=4, alpha=8.0, seed=1, targets=TARGETS_ONE),
            "two": write_peft_adapter(root / "two", TINY, rank=8, alpha=8.0, seed=2, targets=TARGETS_TWO)}


@pytest.fixture(scope="module")
def fp32_with_adapters(tmp_path_factory, tiny_hf, adapters):
    return export_tiny(tiny_hf, tmp_path_factory.mktemp("out"), "fp32",
                       adapters=tuple(adapters.items()))


def merged_hf(folder: Path, state: dict, adapter: Path, tmp: Path) -> Path:
    """A Hugging Face checkpoint with the adapter merged in Hugging Face's own layout (W + alpha/r B A):
    what PEFT's merge_and_unload writes, computed without this project's reader."""
    from safetensors.torch import load_file

    config = json.loads((adapter / "adapter_config.json").read_text())
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    from llama_mobile.export.hf_loader import hf_to_meta_rope, meta_to_hf_rope

    merged = dict(state)
    scale = config["lora_alpha"] / config["r"]
    for layer in range(TINY.n_layers):
        for meta, hf in PEFT_MODULES.items():
            key = f"base_model.model.model.layers.{layer}.{hf}"
            if f"{key}.lora_A.weight" not in tensors:
                continue
            delta = scale * tensors[f"{key}.lora_B.weight"] @ tensors[f"{key}.lora_A.weight"]
            name = f"layers.{layer}.{meta}.weight"
            heads = {"attention.wq": TINY.n_heads, "attention.wk": TINY.n_kv_heads}.get(meta)
            # the state is in Meta layout; the delta is in Hugging Face's: merge there, come back
            weight = meta_to_hf_rope(state[name], heads) if heads else state[name]
            weight = weight + delta
            merged[name] = hf_to_meta_rope(weight, heads) if heads else weight
    return write_hf(tmp, TINY, merged, dtype=torch.float32)


def test_an_adapter_program_computes_what_the_merged_weights_compute(fp32_with_adapters, adapters, tiny_state,
                                                                      tmp_path, custom_ops):
    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.runtime_harness.program import Program

    bundle = verify_bundle(fp32_with_adapters.bundle)
    ids = list(range(3, 40))
    base = Program.of(bundle).logits_per_position(ids)
    for name, folder in adapters.items():
        ours = Program.of(bundle, name).logits_per_position(ids)
        # tiny_state is what write_hf stored as bfloat16: the merged checkpoint starts from the same values
        state = {k: v.to(torch.bfloat16).float() for k, v in tiny_state.items()}
        reference_bundle = export_tiny(merged_hf(tmp_path, state, folder, tmp_path / f"merged-{name}"),
                                       tmp_path / f"out-{name}", "fp32")
        reference = Program.of(verify_bundle(reference_bundle.bundle)).logits_per_position(ids)
        assert (ours - base).abs().max() > 1e-2  # the adapter changes the logits...
        assert torch.allclose(ours, reference, atol=2e-4, rtol=1e-4), (ours - reference).abs().max()  # ...as merging does


def test_the_bundle_holds_the_base_weights_once_and_a_small_program_per_adapter(fp32_with_adapters, adapters):
    from llama_mobile.core.bundle import verify_bundle

    bundle = verify_bundle(fp32_with_adapters.bundle)
    manifest = bundle.manifest
    assert [a["name"] for a in manifest.adapters] == ["one", "two"]
    files = manifest.files
    assert set(files) >= {"model.pte", "model.ptd", "adapters/one.pte", "adapters/two.pte"}
    assert sum(name.endswith(".ptd") for name in files) == 1
    for entry in manifest.adapters:
        assert entry["parity"]["passed"] and entry["parity"]["reference"] == "fp32 eager, adapter merged"
        assert entry["parity"]["metrics"]["kl_mean"] < 1e-6
        # the program carries only its own low-rank matrices: far smaller than the base weights
        assert files[entry["program"]].size < files["model.ptd"].size / 2
    one = manifest.adapter("one")
    assert (one["rank"], one["scale"], one["targets"]) == (4, 2.0, list(TARGETS_ONE))
    assert one["linears"] == TINY.n_layers * len(TARGETS_ONE)
    assert manifest.adapter("two")["scale"] == 1.0
    with pytest.raises(UsageError, match="no adapter 'three'.*one, two"):
        bundle.adapter_program("three")


def test_quantized_base_is_shared_and_every_adapter_is_gated(tmp_path, tiny_hf, adapters, custom_ops):
    from llama_mobile.core.bundle import verify_bundle
    from llama_mobile.runtime_harness.program import Program

    plain = export_tiny(tiny_hf, tmp_path / "plain", "8da4w")
    with_adapters = export_tiny(tiny_hf, tmp_path / "adapted", "8da4w", adapters=tuple(adapters.items()))
    bundle = verify_bundle(with_adapters.bundle)
    assert all(a["parity"]["passed"] for a in bundle.manifest.adapters)
    # the base program over the shared weights gives what the export without adapters gives
    ids = list(range(3, 30))
    plain_bundle = verify_bundle(plain.bundle)
    assert torch.equal(Program.of(bundle).logits_per_position(ids), Program.of(plain_bundle).logits_per_position(ids))
    assert bundle.manifest.parity["metrics"] == plain_bundle.manifest.parity["metrics"]


def test_a_tampered_adapter_entry_is_refused(fp32_with_adapters, tmp_path):
    import shutil

    from llama_mobile.core.bundle import verify_bundle

    copy = tmp_path / "copy"
    shutil.copytree(fp32_with_adapters.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["adapters"][0]["program"] = "adapters/../model.pte"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError):
        verify_bundle(copy)
    manifest["adapters"][0]["program"] = "adapters/missing.pte"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="adapters/missing.pte"):
        verify_bundle(copy)
    manifest["adapters"][0]["program"] = "adapters/one.pte"
    manifest["adapters"][1]["name"] = "one"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="adapter name twice"):
        verify_bundle(copy)


def test_generate_names_the_adapters_a_bundle_has(fp32_with_adapters, capfd):
    result = CliRunner().invoke(main, ["generate", str(fp32_with_adapters.bundle), "--raw", "--prompt", "hi",
                                       "--adapter", "nope"])
    assert result.exit_code == 2
    assert "no adapter 'nope'" in result.stderr + capfd.readouterr().err


# --- bad adapters: one-line errors, before any weight of the base is read -----------------------------

def _read(folder: Path):
    from llama_mobile.export.adapters import read_adapter

    return read_adapter("a", folder, TINY)


def test_a_good_adapter_reads_with_its_scale_and_rank(tmp_path):
    adapter = _read(write_peft_adapter(tmp_path / "a", TINY, rank=4, alpha=16, targets=TARGETS_ONE))
    assert (adapter.rank, adapter.scale, adapter.targets) == (4, 4.0, TARGETS_ONE)
    rs = _read(write_peft_adapter(tmp_path / "rs", TINY, rank=4, alpha=16, config={"use_rslora": True}))
    assert rs.scale == 16 / math.sqrt(4)
    a, b = adapter.weights["layers.1.feed_forward.w2"]
    assert a.shape == (4, TINY.ffn_hidden) and b.shape == (TINY.dim, 4)
    # the weights file alone finds its config beside it
    assert _read(tmp_path / "a" / "adapter_model.safetensors").weights.keys() == adapter.weights.keys()


@pytest.mark.parametrize("case, error, message", [
    ("rank", CheckpointError, "is not the config's r = 8"),
    ("arch", CheckpointError, "an adapter for another architecture"),
    ("target", CheckpointError, "target module 'lm_head' is not a linear of a Llama block"),
    ("nan", CheckpointError, "NaN or infinite"),
    ("layer", CheckpointError, "adapts layer 7; the base has 2"),
    ("dora", CheckpointError, "unsupported LoRA setting use_dora=True"),
    ("half", CheckpointError, "lora_B missing"),
    ("foreign", CheckpointError, "is not a LoRA A/B matrix"),
    ("unlisted", CheckpointError, "is not in target_modules"),
    ("no-config", UsageError, "file not found"),
    ("missing", UsageError, "adapter not found"),
    ("pickle", UsageError, "no pickles are read"),
])
def test_a_bad_adapter_is_a_one_line_error(tmp_path, case, error, message):
    from tests.checkpoints import TINY_WIDE

    folder = tmp_path / case
    tensors = peft_adapter_tensors(TINY, 4, ("attention.wq", "attention.wv"), seed=0)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    config = {}
    if case == "rank":
        config = {"r": 8}
    elif case == "arch":
        tensors = peft_adapter_tensors(TINY_WIDE, 4, ("attention.wq", "attention.wv"), seed=0)
    elif case == "target":
        config = {"target_modules": ["q_proj", "lm_head"]}
    elif case == "nan":
        tensors[f"{key}.lora_A.weight"][0, 0] = float("nan")
    elif case == "layer":
        tensors["base_model.model.model.layers.7.self_attn.q_proj.lora_A.weight"] = tensors[f"{key}.lora_A.weight"].clone()
    elif case == "dora":
        config = {"use_dora": True}
    elif case == "half":
        del tensors[f"{key}.lora_B.weight"]
    elif case == "foreign":
        tensors["base_model.model.lm_head.weight"] = torch.zeros(3, 3)
    elif case == "unlisted":
        config = {"target_modules": ["v_proj"]}
    write_peft_adapter(folder, TINY, tensors=tensors, targets=("attention.wq", "attention.wv"), config=config)
    if case == "no-config":
        (folder / "adapter_config.json").unlink()
    elif case == "missing":
        folder = tmp_path / "nowhere"
    elif case == "pickle":
        folder = folder / "adapter.pt"
        folder.write_bytes(b"not read")
    with pytest.raises(error, match=message) as caught:
        _read(folder)
    assert "\n" not in str(caught.value)


def test_the_cli_refuses_bad_adapter_requests_before_loading(tmp_path, tiny_hf, adapters, capfd):
    def run(*args):
        result = CliRunner().invoke(main, ["export", "--model", "llama", "--checkpoint", str(tiny_hf),
                                           "-o", str(tmp_path / "out"), "--context", "64", *args])
        return result.exit_code, result.stderr + capfd.readouterr().err

    one = f"one={adapters['one']}"
    assert run("--adapter", "one")[0] == 2  # not NAME=PATH
    code, err = run("--adapter", f"../x={adapters['one']}")
    assert code == 2 and "must be 1-64 letters" in err
    code, err = run("--adapter", one, "--adapter", one)
    assert code == 2 and "given twice" in err
    code, err = run("--adapter", one, "--single-file")
    assert code == 2 and "share one base weights file" in err
    code, err = run("--adapter", one, "--recipe", "8da4w-mixed-rot")
    assert code == 2 and "rotation" in err
    code, err = run("--adapter", f"one={tmp_path / 'absent'}")
    assert code == 2 and "not found" in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())  # nothing written


def test_a_failed_adapter_gate_fails_the_bundle():
    from llama_mobile.jobs.adapter_export import with_adapter_failures

    base = {"passed": True, "failures": []}
    good = {"name": "one", "parity": {"passed": True, "failures": []}}
    bad = {"name": "two", "parity": {"passed": False, "failures": ["kl_mean 0.9 > 0.2"]}}
    assert with_adapter_failures(base, [good]) == base
    failed = with_adapter_failures(base, [good, bad])
    assert not failed["passed"] and failed["failures"] == ["adapter two: kl_mean 0.9 > 0.2"]
    assert with_adapter_failures(None, [bad]) is None  # --no-validate: nothing gated
