"""``keep_large_blocks``: large blocks come from the reusable heap, not fresh mmaps."""

import subprocess
import sys

import pytest

# In a fresh process (the allocator is per process): bytes of a new 24 MiB tensor that
# glibc serves by mmap (then faulted in page by page and unmapped when freed).
SCRIPT = """
import ctypes, sys, torch
from llray.packs.malloc import keep_large_blocks
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "1":
    assert keep_large_blocks()
before = libc.mallinfo2().hblkhd
t = torch.ones(6 * 1024 * 1024)
print(libc.mallinfo2().hblkhd - before)
"""


def mmapped(tuned: bool) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, "1" if tuned else "0"],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_tuned_process_serves_large_tensors_from_the_heap():
    assert mmapped(False) >= 24 * 1024 * 1024  # glibc's default: its own mmap
    assert mmapped(True) == 0  # tuned: from the heap, reused after it is freed
