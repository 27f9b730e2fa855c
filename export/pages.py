"""Hand a memory-mapped checkpoint's pages back to the kernel once they have been read.

A tensor read from an mmap'ed file keeps its pages resident (and counted in the process's RSS) for as
long as the mapping lives, which is as long as any tensor of the file lives. MADV_PAGEOUT drops the clean
file pages now; touching the tensor again re-reads them from disk, so nothing is lost. On anonymous
memory it is a no-op without swap, and with swap it only swaps, so calling it on any tensor is safe.
"""
from __future__ import annotations

import ctypes
import os
from collections.abc import Iterable

import torch

MADV_PAGEOUT = 21  # Linux 5.4+
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_madvise = None


def _libc_madvise():
    global _madvise
    if _madvise is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
            _madvise = libc.madvise
        except (OSError, AttributeError):
            _madvise = False
    return _madvise


def settle_file(path) -> None:
    """Write a freshly written file's dirty pages to disk before mapping it: the kernel will not page
    out a dirty page, so a checkpoint saved moments ago would otherwise stay resident (+1.6 GiB at 3B
    shapes, measured). A no-op on a file already on disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # the loader reports a missing or unreadable file itself
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def release_pages(tensors: Iterable[torch.Tensor]) -> None:
    """Best effort: an OS without MADV_PAGEOUT just keeps the pages."""
    madvise = _libc_madvise()
    if not madvise:
        return
    for tensor in tensors:
        if tensor.device.type != "cpu" or tensor.numel() == 0:
            continue
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        first, last = -(-start // _PAGE) * _PAGE, end // _PAGE * _PAGE  # whole pages inside the tensor only
        if last > first:
            madvise(first, last - first, MADV_PAGEOUT)
