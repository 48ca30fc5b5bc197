# Helix device tracing for MicroPython: spans as CBOR (docs/sdk-cbor-schema.md) and W3C trace context for MQTT v5
# user properties. One module, no dependencies; runs on MicroPython 1.20+ (with long integers) and CPython.
#
#   import helix_trace
#   tracer = helix_trace.Tracer(lambda topic, payload: client.publish(topic, payload, qos=1), "valve-3")
#   with tracer.span("handleCommand", kind=helix_trace.CONSUMER, parent=helix_trace.extract(props)) as s:
#       s.set("valve.id", 3)
#
# Spans of one local root go out in one message when it ends (or earlier when max_batch spans wait). Long text,
# too many attributes or events are cut, and what was cut is counted in the message (envelope key 5).
import time

try:
    from os import urandom as _urandom
except ImportError:
    _urandom = None
try:
    import random as _random
except ImportError:
    _random = None

VERSION = "0.1.0"
INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER = 1, 2, 3, 4, 5
UNSET, OK, ERROR = 0, 1, 2
MAX_STRING = 256  # characters; longer text is cut
MAX_ATTRIBUTES = 32  # per span (the agent takes up to 128)
MAX_EVENTS = 16
MAX_TRACESTATE = 512
_HEX = "0123456789abcdef"
_CUT_SPANS, _CUT_ATTRIBUTES, _CUT_EVENTS, _CUT_STRINGS = 1, 2, 3, 4

if hasattr(time, "ticks_us"):
    _mono = time.ticks_us  # wraps: only differences are used

    def _diff_ns(t0, t1):
        return time.ticks_diff(t1, t0) * 1000
else:  # CPython
    _mono = time.monotonic_ns

    def _diff_ns(t0, t1):
        return t1 - t0


def _wall_ns():
    if hasattr(time, "time_ns"):
        return time.time_ns()
    return int(time.time()) * 1000000000


def _random_bytes(n):
    if _urandom is not None:
        return _urandom(n)
    b = bytearray()
    for _ in range(0, n, 4):
        b.extend(_random.getrandbits(32).to_bytes(4, "big"))
    return bytes(b[:n])


def _new_id(n):
    while True:
        b = _random_bytes(n)
        if any(b):
            return b


def _new_run():
    return int.from_bytes(_random_bytes(4), "big")


# ----------------------------------------------------------------------------------------------------- CBOR

def _head(out, major, v):
    if v < 24:
        out.append(major << 5 | v)
    elif v < 0x100:
        out.append(major << 5 | 24)
        out.append(v)
    elif v < 0x10000:
        out.append(major << 5 | 25)
        out.extend(v.to_bytes(2, "big"))
    elif v < 0x100000000:
        out.append(major << 5 | 26)
        out.extend(v.to_bytes(4, "big"))
    else:
        out.append(major << 5 | 27)
        out.extend(v.to_bytes(8, "big"))


def _text(out, s, cut):
    if len(s) > MAX_STRING:
        s = s[:MAX_STRING]
        cut[_CUT_STRINGS] = cut.get(_CUT_STRINGS, 0) + 1
    b = s.encode()
    _head(out, 3, len(b))
    out.extend(b)


def _value(out, v, cut, depth=0):
    if v is True:
        out.append(0xF5)
    elif v is False:
        out.append(0xF4)
    elif isinstance(v, int):
        if v >= 0:
            _head(out, 0, v & 0xFFFFFFFFFFFFFFFF)
        else:
            _head(out, 1, (-1 - v) & 0xFFFFFFFFFFFFFFFF)
    elif isinstance(v, float):
        import struct
        out.append(0xFB)
        out.extend(struct.pack(">d", v))
    elif isinstance(v, str):
        _text(out, v, cut)
    elif isinstance(v, (bytes, bytearray)):
        _head(out, 2, len(v))
        out.extend(v)
    elif isinstance(v, (list, tuple)) and depth < 4:
        _head(out, 4, len(v))
        for x in v:
            _value(out, x, cut, depth + 1)
    elif isinstance(v, dict) and depth < 4:
        _head(out, 5, len(v))
        for k in v:
            _text(out, str(k), cut)
            _value(out, v[k], cut, depth + 1)
    else:
        _text(out, str(v), cut)


# ------------------------------------------------------------------------------------------ trace context

class SpanContext:
    """A W3C trace context: received (extract) or taken from a span (Span.context) to send on."""

    def __init__(self, trace_id, span_id, flags=1, trace_state=""):
        self.trace_id = trace_id
        self.span_id = span_id
        self.flags = flags
        self.trace_state = trace_state


def _hex(b):
    return "".join(_HEX[x >> 4] + _HEX[x & 15] for x in b)


def _unhex(s):
    out = bytearray(len(s) // 2)
    for i in range(0, len(s), 2):
        hi, lo = _HEX.find(s[i]), _HEX.find(s[i + 1])
        if hi < 0 or lo < 0:
            return None
        out[i // 2] = hi << 4 | lo
    return bytes(out)


def traceparent(ctx):
    """The `traceparent` value for ctx."""
    return "00-" + _hex(ctx.trace_id) + "-" + _hex(ctx.span_id) + "-" + _HEX[ctx.flags >> 4 & 15] + _HEX[ctx.flags & 15]


def parse_traceparent(value, tracestate=None):
    """A SpanContext from `traceparent` (and `tracestate`) values, or None if invalid."""
    if not isinstance(value, str) or len(value) < 55 or len(value) > 4096:
        return None
    version = _unhex(value[0:2])
    if version is None or version[0] == 255 or value[2] != "-" or value[35] != "-" or value[52] != "-":
        return None
    # Version 00 is exactly 55 characters; a later version may add fields after a '-'.
    if len(value) > 55 and (version[0] == 0 or value[55] != "-"):
        return None
    tid, sid, flags = _unhex(value[3:35]), _unhex(value[36:52]), _unhex(value[53:55])
    if tid is None or sid is None or flags is None or not any(tid) or not any(sid):
        return None
    state = ""
    if isinstance(tracestate, str) and len(tracestate) <= MAX_TRACESTATE \
            and all(32 <= ord(c) <= 126 for c in tracestate):
        state = tracestate
    return SpanContext(tid, sid, flags[0], state)


def inject(ctx, properties=None):
    """Add the context to a list of MQTT v5 user-property pairs (created when None), replacing older ones."""
    props = [p for p in (properties or []) if p[0].lower() not in ("traceparent", "tracestate")]
    props.append(("traceparent", traceparent(ctx)))
    if ctx.trace_state:
        props.append(("tracestate", ctx.trace_state))
    return props


def extract(properties):
    """The context in a sequence of user-property pairs (keys case-insensitive, first wins), or None."""
    tp = ts = None
    for pair in properties or ():
        try:
            k, v = pair
            k = k.lower()
        except (TypeError, ValueError, AttributeError):
            continue
        if k == "traceparent" and tp is None:
            tp = v
        elif k == "tracestate" and ts is None:
            ts = v
    return parse_traceparent(tp, ts)


# ----------------------------------------------------------------------------------------------------- spans

class Span:
    """A span being recorded; `end()` it, or use it in a `with` block."""

    def __init__(self, tracer, name, kind, trace_id, parent_id, flags, state, local_root):
        self.tracer = tracer
        self.name = name
        self.kind = kind
        self.trace_id = trace_id
        self.span_id = _new_id(8)
        self.parent_id = parent_id
        self.flags = flags
        self.trace_state = state
        self.local_root = local_root
        self.attributes = {}
        self.events = []
        self.status = UNSET
        self.status_message = ""
        self.ended = False
        self._t0 = _mono()
        self.start_ns = tracer._wall_at(self._t0, local_root)
        self.end_ns = 0

    @property
    def context(self):
        """This span's context, to send on with a message it makes (see inject)."""
        return SpanContext(self.trace_id, self.span_id, self.flags, self.trace_state)

    def set(self, key, value):
        """Set one attribute (OpenTelemetry semantic-convention names where one fits)."""
        if key in self.attributes or len(self.attributes) < MAX_ATTRIBUTES:
            self.attributes[key] = value
        else:
            self.tracer._count(_CUT_ATTRIBUTES)
        return self

    def event(self, name, attributes=None):
        """Record a timestamped event."""
        if len(self.events) < MAX_EVENTS:
            self.events.append((name, _diff_ns(self._t0, _mono()), attributes))
        else:
            self.tracer._count(_CUT_EVENTS)
        return self

    def set_status(self, ok, message=""):
        """Mark the span OK or ERROR (with a message for errors)."""
        self.status = OK if ok else ERROR
        self.status_message = "" if ok else message
        return self

    def end(self):
        """Finish the span; ending twice is ignored."""
        if self.ended:
            return
        self.ended = True
        self.end_ns = self.start_ns + max(0, _diff_ns(self._t0, _mono()))
        self.tracer._on_end(self)

    def __enter__(self):
        self.tracer._stack.append(self)
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is not None:
            name = getattr(exc_type, "__name__", "Exception")
            self.event("exception", {"exception.type": name, "exception.message": str(exc)})
            self.set_status(False, name + ": " + str(exc))
        if self.tracer._stack and self.tracer._stack[-1] is self:
            self.tracer._stack.pop()
        self.end()
        return False

    def _encode(self, out, cut):
        n = 5 + (self.parent_id is not None) + (self.kind != INTERNAL) + (self.status != UNSET) \
            + (self.status_message != "") + (len(self.attributes) > 0) + (len(self.events) > 0) \
            + (self.trace_state != "") + (self.flags != 1)
        _head(out, 5, n)
        out.append(1), _head(out, 2, 16), out.extend(self.trace_id)
        out.append(2), _head(out, 2, 8), out.extend(self.span_id)
        if self.parent_id is not None:
            out.append(3), _head(out, 2, 8), out.extend(self.parent_id)
        out.append(4), _text(out, self.name, cut)
        if self.kind != INTERNAL:
            out.append(5), _head(out, 0, self.kind)
        out.append(6), _head(out, 0, self.start_ns)
        out.append(7), _head(out, 0, max(0, self.end_ns - self.start_ns))
        if self.status != UNSET:
            out.append(8), _head(out, 0, self.status)
        if self.status_message:
            out.append(9), _text(out, self.status_message, cut)
        if self.attributes:
            out.append(10), _value(out, self.attributes, cut)
        if self.events:
            out.append(11), _head(out, 4, len(self.events))
            for name, offset, attrs in self.events:
                _head(out, 4, 3 if attrs else 2)
                _text(out, name, cut)
                _head(out, 0, max(0, offset))
                if attrs:
                    _value(out, attrs, cut)
        if self.trace_state:
            out.append(13), _text(out, self.trace_state, cut)
        if self.flags != 1:
            out.append(14), _head(out, 0, self.flags)


class Tracer:
    """Records the spans of one device and hands each message to `publish(topic, payload)`."""

    def __init__(self, publish, device_id, resource=None, topic=None, max_batch=32, wall_ns=None):
        self.publish = publish
        self.topic = topic or "helix/sdk/" + device_id + "/spans"
        self.resource = {"service.name": device_id, "device.id": device_id}
        if resource:
            self.resource.update(resource)
        self.max_batch = max_batch
        self.seq = 0
        self.run = _new_run()  # random per start (envelope key 6): a restart is told from a late message
        self.published = 0
        self.publish_failures = 0
        self._wall_ns = wall_ns or _wall_ns
        self._anchor = None
        self._pending = []
        self._cut = {}
        self._stack = []

    def _wall_at(self, t0, local_root):
        if local_root or self._anchor is None:  # one wall-clock reading per trace; the monotonic clock does the rest
            self._anchor = (t0, self._wall_ns())
        return self._anchor[1] + _diff_ns(self._anchor[0], t0)

    def _count(self, kind, n=1):
        self._cut[kind] = self._cut.get(kind, 0) + n

    def span(self, name, kind=INTERNAL, parent=None, attributes=None):
        """Start a span: child of `parent` (a Span or SpanContext), else of the innermost open `with` span."""
        if parent is None and self._stack:
            parent = self._stack[-1]
        if parent is None:
            s = Span(self, name, kind, _new_id(16), None, 1, "", True)
        else:
            s = Span(self, name, kind, parent.trace_id, parent.span_id, parent.flags, parent.trace_state,
                     not isinstance(parent, Span))
        if attributes:
            for k in attributes:
                s.set(k, attributes[k])
        return s

    def _on_end(self, span):
        self._pending.append(span)
        if span.local_root or len(self._pending) >= self.max_batch:
            self.flush()

    def flush(self):
        """Publish the ended spans now, in one message. Returns True if the publish hook did not raise."""
        spans, self._pending = self._pending, []
        if not spans and not self._cut:
            return True
        body = bytearray()
        cut = self._cut
        self._cut = {}
        for s in spans:
            s._encode(body, cut)
        out = bytearray()
        _head(out, 5, 7 if cut else 6)
        out.append(0), out.append(1)
        out.append(1), _value(out, self.resource, {})
        out.append(2), _head(out, 4, 2), _text(out, "helix.micropython", {}), _text(out, VERSION, {})
        out.append(6), _head(out, 0, self.run)
        out.append(4), _head(out, 0, self.seq)
        if cut:
            out.append(5), _head(out, 5, len(cut))
            for k in cut:
                _head(out, 0, k), _head(out, 0, cut[k])
        out.append(3), _head(out, 4, len(spans))
        out.extend(body)
        self.seq = (self.seq + 1) & 0xFFFFFFFF  # a failed publish leaves a gap the agent counts
        try:
            self.publish(self.topic, bytes(out))
        except Exception:  # noqa: BLE001 - the device's MQTT client may raise anything (OSError mostly)
            self.publish_failures += 1
            return False
        self.published += 1
        return True
