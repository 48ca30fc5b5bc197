from __future__ import annotations

import os
import subprocess
import sys

from edge.runtime.allocator import limit_arenas

_ARENAS_AFTER_THREADS = """
import ctypes, sys, threading
from edge.runtime.allocator import limit_arenas
print(limit_arenas(2))
def work():
    keep = [ctypes.create_string_buffer(4096) for _ in range(2000)]  # malloc from this thread's arena
    ready.wait()
ready = threading.Event()
threads = [threading.Thread(target=work) for _ in range(8)]
for t in threads: t.start()
import time; time.sleep(0.5)
# malloc_info lists one <heap> per arena in use
libc = ctypes.CDLL("libc.so.6")
libc.open_memstream.restype = ctypes.c_void_p
buf, size = ctypes.c_char_p(), ctypes.c_size_t()
f = libc.open_memstream(ctypes.byref(buf), ctypes.byref(size))
libc.malloc_info(0, ctypes.c_void_p(f)); libc.fclose(ctypes.c_void_p(f))
print(buf.value.decode().count("<heap nr="))
ready.set()
for t in threads: t.join()
"""


def test_arenas_are_capped_for_threads_that_allocate() -> None:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    out = subprocess.run([sys.executable, "-c", _ARENAS_AFTER_THREADS], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "2" and int(out[1]) <= 2, out


def test_the_environment_wins() -> None:
    assert limit_arenas(2, environ={"MALLOC_ARENA_MAX": "4"}) is None
    assert limit_arenas(0, environ={}) is None
