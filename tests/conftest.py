import warnings
from pathlib import Path

import pytest

from tests.checkpoints import TINY, random_state_dict, write_hf, write_meta

warnings.filterwarnings("ignore")


@pytest.fixture(scope="session")
def tiny_state():
    return random_state_dict(TINY, seed=0)


@pytest.fixture(scope="session")
def tiny_hf(tmp_path_factory, tiny_state) -> Path:
    return write_hf(tmp_path_factory.mktemp("ckpt") / "hf", TINY, tiny_state)


@pytest.fixture(scope="session")
def tiny_meta(tmp_path_factory, tiny_state) -> Path:
    return write_meta(tmp_path_factory.mktemp("ckpt") / "meta", TINY, tiny_state)


def export_tiny(checkpoint: Path, out: Path, recipe: str, **kwargs):
    from llama_mobile.jobs.export_job import ExportRequest, run_export

    options = {"context": 64, "positions": 48, **kwargs}
    request = ExportRequest(model="llama", checkpoint=checkpoint, recipe=recipe, target="xnnpack",
                            output_dir=out, **options)
    return run_export(request)


@pytest.fixture(scope="session")
def tiny_fp32_bundle(tmp_path_factory, tiny_hf):
    return export_tiny(tiny_hf, tmp_path_factory.mktemp("out"), "fp32")


@pytest.fixture(scope="session")
def tiny_8da4w_bundle(tmp_path_factory, tiny_hf):
    return export_tiny(tiny_hf, tmp_path_factory.mktemp("out"), "8da4w")


@pytest.fixture(scope="session")
def custom_ops():
    from llama_mobile.export.model import load_custom_ops

    load_custom_ops()
