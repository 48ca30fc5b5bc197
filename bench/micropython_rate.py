# Runs under MicroPython (and CPython): traces of a root with four attributes and two children through
# helix_trace, messages handed to a hook that drops them. Prints spans per second.
import sys
import time

import helix_trace as ht

TRACES = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
sizes = []
t = ht.Tracer(lambda topic, payload: sizes.append(len(payload)), "bench-device")
clock = time.ticks_ms if hasattr(time, "ticks_ms") else (lambda: int(time.monotonic() * 1000))
t0 = clock()
for i in range(TRACES):
    with t.span("handleCommand", kind=ht.CONSUMER) as root:
        root.set("device.mode", "auto")
        root.set("cycle", i)
        root.set("setpoint", 21.5)
        root.set("manual", False)
        with t.span("readSensor"):
            pass
        with t.span("actuateValve"):
            pass
ms = clock() - t0
if hasattr(time, "ticks_diff"):
    ms = time.ticks_diff(clock(), t0)
print("RATE %d %d %d" % (3 * TRACES * 1000 // max(1, ms), len(sizes), sizes[0]))
