"""``keep_large_blocks``: large blocks come from the reusable heap, not fresh mmaps."""

import subprocess
import sys

import pytest

from llray.packs import malloc

# In a fresh process (the allocator is per process): bytes of a new 24 MiB block that
# glibc serves by mmap (then faulted in page by page and unmapped when freed).
SCRIPT = """
import ctypes, importlib.util, sys
spec = importlib.util.spec_from_file_location("malloc", sys.argv[2])  # without torch
mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(mod)
class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks",
                "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = MallInfo2
if sys.argv[1] == "1":
    assert mod.keep_large_blocks()
libc.malloc.restype = ctypes.c_void_p
before = libc.mallinfo2().hblkhd
block = libc.malloc(24 * 1024 * 1024)
print(libc.mallinfo2().hblkhd - before)
"""


def mmapped(tuned: bool) -> int:
    out = subprocess.run([sys.executable, "-c", SCRIPT, "1" if tuned else "0", malloc.__file__],
                         capture_output=True, text=True, check=True)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt is Linux-only")
def test_tuned_process_serves_large_tensors_from_the_heap():
    assert mmapped(False) >= 24 * 1024 * 1024  # glibc's default: its own mmap
    assert mmapped(True) == 0  # tuned: from the heap, reused after it is freed
