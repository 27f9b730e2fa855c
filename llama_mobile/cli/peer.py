"""`llama-mobile peer`: the llama.cpp this tool compares against, built once from llama-cpp-python's sdist."""
from __future__ import annotations

import json

import click

from llama_mobile.cli.common import say


@click.group()
def peer():
    """The llama.cpp peer: built once per version, used by `bench --quality --peer-types`.

    \b
    Example:
      llama-mobile peer build
      llama-mobile bench out/smollm2-135m-instruct-8da4w-mixed-xnnpack --quality-only --peer-types Q4_0,Q4_K_M
    """


@peer.command()
@click.option("--jobs", "-j", default=2, show_default=True, type=click.IntRange(1), help="parallel compile jobs")
@click.option("--force", is_flag=True, help="rebuild even when a finished build is there")
@click.option("--json", "as_json", is_flag=True, help="print build.json")
def build(jobs, force, as_json):
    """Build llama.cpp's library, llama-quantize, llama-imatrix and llama-bench from the pinned
    llama-cpp-python sdist, with the ISA flags /proc/cpuinfo reports (-DGGML_NATIVE=OFF, never
    -march=native, never AMX), at nice 10, into ~/.cache/llama-mobile/llama.cpp-VERSION/
    ($LLAMA_MOBILE_CACHE overrides). Its Python package loads that library through LLAMA_CPP_LIB_PATH,
    so llama.cpp's logits need no second compile. Needs cmake and a C/C++ compiler (exit 11 otherwise);
    takes minutes on 2 cores, once.

    \b
    Example:
      llama-mobile peer build
      llama-mobile peer build --json     # the flags, the version, where it is
    """
    from llama_mobile.runtime_harness.llama_cpp_build import build_llama_cpp, find_build

    before = find_build()
    done = build_llama_cpp(jobs=jobs, force=force, emit=say)
    if as_json:
        click.echo(json.dumps(done.info(), indent=2))
        return
    info = done.info()
    on = [name for name, value in info["isa_options"].items() if value]
    click.echo(f"llama.cpp (llama-cpp-python {info['llama_cpp_python']}){' already' if before and not force else ''} "
               f"built: {done.lib_dir}")
    click.echo(f"ISA: {' '.join(on) or 'baseline x86-64'}")


@peer.command()
@click.option("--json", "as_json", is_flag=True)
def info(as_json):
    """Where the llama.cpp build is and the flags it was made with (exit 11 when there is none).

    \b
    Example:
      llama-mobile peer info --json
    """
    from llama_mobile.core.errors import ResourceError
    from llama_mobile.runtime_harness.llama_cpp_build import default_build, find_build

    found = find_build()
    if found is None:
        raise ResourceError(f"no llama.cpp build in {default_build().root}", fix="llama-mobile peer build")
    data = found.info()
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    click.echo(f"llama-cpp-python {data['llama_cpp_python']}: {data['lib_dir']}")
    click.echo("configure: " + " ".join(data["configure"]))
