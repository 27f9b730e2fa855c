"""Write a Meta-format checkpoint with random weights and a preset's real shapes, for benchmarks.

    .venv/bin/python bench/write_random_checkpoint.py llama3.2-1b /tmp/ck/Llama3.2-1B

Weights are bf16 (as Meta ships them) with Meta's real Llama 3 tokenizer.model (from the llama-models
wheel that setup.sh installs). Real weights cannot be downloaded here; speed and memory do not depend
on their values.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from llama_mobile.core.presets import MODEL_PRESETS  # noqa: E402
from tests.checkpoints import llama3_tokenizer_model, random_state_dict, write_meta  # noqa: E402


def main() -> None:
    if len(sys.argv) != 3 or sys.argv[1] not in MODEL_PRESETS:
        sys.exit(f"usage: {sys.argv[0]} PRESET FOLDER  (PRESET one of {', '.join(sorted(MODEL_PRESETS))})")
    arch = MODEL_PRESETS[sys.argv[1]].architecture
    folder = write_meta(Path(sys.argv[2]), arch, random_state_dict(arch, seed=0, scale=0.02),
                        tokenizer=llama3_tokenizer_model())
    print(folder)


if __name__ == "__main__":
    main()
