"""Low-level helpers that training and evaluation both use, and that import nothing else of
selfsup: gathers across ranks with gradients (``distributed``), precision and memory-format
resolution (``precision``), glibc heap allocations for CPU training (``allocator``), atomic file
writes and safe checkpoint reads (``files``)."""
