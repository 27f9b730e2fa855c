"""The command line: one module per command group; `main` is the entry point."""
from llama_mobile.cli.main import main

__all__ = ["main"]
