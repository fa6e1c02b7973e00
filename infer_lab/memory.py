"""Handing freed memory back to the operating system.

PyTorch frees a tensor's memory when the tensor goes, but the C library's allocator may
keep the pages mapped for reuse: glibc returns a large allocation (a mapping of its own)
at once, and keeps the small ones' heap pages. After decoding a model file tensor by
tensor, or building and dropping a dozen quantized copies, a process can hold hundreds
of MB it no longer uses, which counts against a 2 GB Binder session.
"""

from __future__ import annotations


def return_freed_memory() -> None:
    """Give the heap pages that decoding freed back to the OS (glibc's ``malloc_trim``).

    glibc keeps freed small allocations mapped for reuse, so after decoding 272 tensors a
    process holds ~270 MB it no longer uses (SmolLM2: 1.18 GB resident after the load,
    0.91 GB after the trim); on a 2 GB Binder session that matters. A no-op elsewhere.
    """
    import ctypes
    import sys

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except (OSError, AttributeError):  # not glibc (musl, ...): nothing to do
            pass
