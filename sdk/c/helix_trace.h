/* Helix device tracing for microcontrollers: spans as CBOR (docs/sdk-cbor-schema.md) and W3C trace context for
 * MQTT v5 user properties. One header, one source file; no heap, no threads, no libc beyond memcpy/memmove/memset.
 *
 * The application owns all storage: the tracer's message buffer, each span (a struct, usually on the stack) and
 * each context. It supplies a random source, clocks and a publish function (its own MQTT client sends the
 * bytes). Spans of one local root go out in one message when the root ends, or earlier when the buffer is full.
 * Whatever does not fit (long strings, too many attributes or events, a span larger than the buffer) is cut,
 * never overflowed, and counted in the next message (envelope key 5).
 *
 * Not thread-safe: use one tracer per thread, or lock around calls.
 */
#ifndef HELIX_TRACE_H
#define HELIX_TRACE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define HX_VERSION "0.1.0"

/* Bytes each span keeps for its attributes and events, encoded (about 12 bytes + key + value each). */
#ifndef HX_SPAN_BUFFER
#define HX_SPAN_BUFFER 160
#endif
/* Longest text kept, in bytes (names, keys, values, status message); longer text is cut at a character. */
#ifndef HX_MAX_STRING
#define HX_MAX_STRING 64
#endif
/* Longest tracestate kept from a received context; a longer one is left out (W3C allows dropping it). */
#ifndef HX_TRACESTATE_MAX
#define HX_TRACESTATE_MAX 128
#endif

#define HX_TRACEPARENT_LEN 55 /* "00-" 32 hex "-" 16 hex "-" 2 hex */

enum { HX_KIND_INTERNAL = 1, HX_KIND_SERVER = 2, HX_KIND_CLIENT = 3, HX_KIND_PRODUCER = 4, HX_KIND_CONSUMER = 5 };
enum { HX_STATUS_UNSET = 0, HX_STATUS_OK = 1, HX_STATUS_ERROR = 2 };
/* Indexes of hx_tracer.cut (what was cut since the last message). */
enum { HX_CUT_SPANS = 0, HX_CUT_ATTRIBUTES = 1, HX_CUT_EVENTS = 2, HX_CUT_STRINGS = 3 };

/* A W3C trace context: received (hx_extract*) or taken from a span (hx_span_context) to send on. */
typedef struct hx_context {
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t flags;
    uint8_t valid;      /* 1 when trace_id/span_id hold a valid traceparent */
    uint8_t seen;       /* extract bookkeeping: bit 0 traceparent seen, bit 1 tracestate seen */
    uint8_t state_len;  /* 0: no tracestate */
    char state[HX_TRACESTATE_MAX];
} hx_context;

typedef struct hx_hooks {
    void (*random)(void *user, uint8_t *out, size_t n);  /* fills n random bytes (hardware RNG) */
    uint64_t (*mono_ns)(void *user);                     /* monotonic clock, ns: durations */
    uint64_t (*wall_ns)(void *user);                     /* Unix time, ns; NULL: spans carry monotonic times */
    int (*publish)(void *user, const uint8_t *msg, size_t len); /* 0 on success */
    void *user;
} hx_hooks;

typedef struct hx_tracer {
    hx_hooks hooks;
    uint8_t *buf;
    size_t cap;
    size_t head;          /* bytes reserved at the front for the envelope header */
    size_t len;           /* end of the encoded spans */
    const char *service;
    const char *device;
    int64_t wall_offset;  /* wall - mono, taken when a local root starts */
    uint32_t seq;         /* number of the next message (envelope key 4) */
    uint32_t run;         /* random id of this start (envelope key 6): tells a restart from a late message */
    uint32_t cut[4];      /* HX_CUT_*, since the last message */
    uint32_t published;
    uint32_t publish_failures;
    uint16_t nspans;
} hx_tracer;

typedef struct hx_span {
    hx_tracer *tracer;
    const char *name;        /* must live until hx_span_end (a literal, typically) */
    const char *status_msg;  /* idem */
    const char *state;       /* tracestate inherited from the remote parent; idem */
    uint64_t start_mono;
    uint64_t start_ns;       /* wall */
    uint64_t end_ns;         /* set by hx_span_end */
    uint8_t trace_id[16];
    uint8_t span_id[8];
    uint8_t parent_id[8];
    uint8_t has_parent, local_root, kind, status, flags, ended, state_len;
    uint8_t nattrs, nevents;
    uint16_t attr_len, event_len;
    uint8_t data[HX_SPAN_BUFFER]; /* encoded attributes, then encoded events */
} hx_span;

/* Prepares a tracer over `buf` (256 bytes or more; 1-2 KiB is typical). Returns 0, or -1 if buf is too small. */
int hx_tracer_init(hx_tracer *t, uint8_t *buf, size_t cap, const char *service_name, const char *device_id,
                   const hx_hooks *hooks);

/* Starts a span: child of `parent` when given, else of `remote` when valid, else the root of a new trace. */
void hx_span_start(hx_tracer *t, hx_span *s, const char *name, uint8_t kind, const hx_span *parent,
                   const hx_context *remote);
void hx_span_set_str(hx_span *s, const char *key, const char *value);
void hx_span_set_int(hx_span *s, const char *key, int64_t value);
void hx_span_set_double(hx_span *s, const char *key, double value);
void hx_span_set_bool(hx_span *s, const char *key, int value);
void hx_span_add_event(hx_span *s, const char *name);
void hx_span_set_status(hx_span *s, uint8_t status, const char *message);
/* Ends the span; a local root (no local parent) publishes the message. Ending twice is ignored. */
void hx_span_end(hx_span *s);
/* Publishes the spans ended so far, if any. Returns 0, or the publish hook's error. */
int hx_flush(hx_tracer *t);

/* The context to send on with a message this span makes (inject it with hx_inject). */
void hx_span_context(const hx_span *s, hx_context *out);
/* Writes the `traceparent` value (55 chars and a NUL) into out; the `tracestate` value is ctx->state. */
void hx_inject(const hx_context *ctx, char out[HX_TRACEPARENT_LEN + 1]);
/* Reads a context from `traceparent` and `tracestate` values (not NUL-terminated; ts may be NULL). 0 if valid. */
int hx_extract(hx_context *ctx, const char *tp, size_t tp_len, const char *ts, size_t ts_len);
/* For each received user property in turn, after hx_context_clear: keys are compared case-insensitively and
 * the first `traceparent` and first `tracestate` win. Returns ctx->valid. */
void hx_context_clear(hx_context *ctx);
int hx_extract_pair(hx_context *ctx, const char *key, size_t key_len, const char *value, size_t value_len);

#ifdef __cplusplus
}
#endif
#endif
