"""The llama-mobile command group. Heavy modules load inside commands so --help stays instant."""
from __future__ import annotations

import click

from llama_mobile.cli.bench import bench
from llama_mobile.cli.chat import chat
from llama_mobile.cli.common import Cli
from llama_mobile.cli.export import export
from llama_mobile.cli.info import devices, models, plan, recipes, targets, verify
from llama_mobile.cli.peer import peer
from llama_mobile.cli.prune import prune
from llama_mobile.cli.run import generate, guard
from llama_mobile.cli.serve import serve
from llama_mobile.cli.validate import validate


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="llama-mobile")
def main():
    """Take a Llama 3.2 1B/3B, Llama Guard 3 1B or any Llama checkpoint to an ExecuTorch bundle
    an Android or iOS app can ship.

    \b
    Example:
      llama-mobile export                # embedded SmolLM2-135M, 8da4w, XNNPACK
      llama-mobile generate out/smollm2-135m-instruct-8da4w-mixed-gptq-xnnpack --prompt "Name three planets."
    """


for command in (export, generate, chat, validate, verify, guard, bench, models, recipes, devices, plan, targets, prune,
                peer, serve):
    main.add_command(command)

if __name__ == "__main__":
    main()
