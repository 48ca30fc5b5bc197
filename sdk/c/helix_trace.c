/* Helix device tracing: see helix_trace.h. Every write goes through a bounded writer (wr), so no input can
 * write past a buffer; what does not fit is dropped and counted instead. */
#include "helix_trace.h"

#include <string.h>

#define MAX_ATTRS 128   /* the agent's limits per span (docs/sdk-cbor-schema.md) */
#define MAX_EVENTS 128
#define MAX_SPANS 10000 /* per message */

typedef struct {
    uint8_t *p; /* NULL: only measure */
    size_t n, cap;
    int err;
} wr;

static void put(wr *w, const void *src, size_t n) {
    if (w->err || n > w->cap - w->n) {
        w->err = 1;
        return;
    }
    if (w->p) memcpy(w->p + w->n, src, n);
    w->n += n;
}

/* A CBOR head: major type and argument, shortest form. */
static void head(wr *w, uint8_t major, uint64_t v) {
    uint8_t b[9];
    size_t n = 1, i;
    if (v < 24) {
        b[0] = (uint8_t)(major << 5 | v);
    } else {
        n = v <= 0xff ? 2 : v <= 0xffff ? 3 : v <= 0xffffffffu ? 5 : 9;
        b[0] = (uint8_t)(major << 5 | (n == 2 ? 24 : n == 3 ? 25 : n == 5 ? 26 : 27));
        for (i = n - 1; i > 0; i--, v >>= 8) b[i] = (uint8_t)v;
    }
    put(w, b, n);
}

/* Bytes of s that are whole, valid UTF-8 characters, at most HX_MAX_STRING; counts a cut in *cut. The agent
 * refuses a message with invalid UTF-8 text, so invalid input is cut where it starts. */
static size_t utf8_prefix(const char *s, uint32_t *cut) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, n, k;
    if (!s) return 0;
    while (u[i]) {
        uint8_t c = u[i], lo = 0x80, hi = 0xBF;
        if (c < 0x80) n = 1;
        else if (c >= 0xC2 && c <= 0xDF) n = 2;
        else if (c >= 0xE0 && c <= 0xEF) { n = 3; if (c == 0xE0) lo = 0xA0; else if (c == 0xED) hi = 0x9F; }
        else if (c >= 0xF0 && c <= 0xF4) { n = 4; if (c == 0xF0) lo = 0x90; else if (c == 0xF4) hi = 0x8F; }
        else break;
        if (i + n > HX_MAX_STRING) break;
        for (k = 1; k < n; k++, lo = 0x80, hi = 0xBF)
            if (u[i + k] < lo || u[i + k] > hi) goto done; /* a NUL stops here too: never read past it */
        i += n;
    }
done:
    if (u[i]) (*cut)++;
    return i;
}

static void text(wr *w, const char *s, uint32_t *cut) {
    size_t n = utf8_prefix(s, cut);
    head(w, 3, n);
    put(w, s, n);
}

static void bytes(wr *w, const uint8_t *b, size_t n) {
    head(w, 2, n);
    put(w, b, n);
}

static void reverse(uint8_t *a, size_t n) {
    size_t i;
    for (i = 0; i < n / 2; i++) {
        uint8_t x = a[i];
        a[i] = a[n - 1 - i];
        a[n - 1 - i] = x;
    }
}

static void random_id(hx_tracer *t, uint8_t *id, size_t n) {
    size_t i;
    uint8_t any = 0;
    t->hooks.random(t->hooks.user, id, n);
    for (i = 0; i < n; i++) any |= id[i];
    if (!any) id[n - 1] = 1; /* an all-zero id is invalid */
}

/* The envelope before the spans array's items: {0: 1, 1: resource, 2: scope, 6: run, 4: seq, 5: cut?, 3: [ */
static void envelope(wr *w, const hx_tracer *t, uint32_t seq, const uint32_t *cut, uint32_t nspans) {
    uint32_t ignored = 0;
    int i, ncut = 0;
    for (i = 0; i < 4; i++) ncut += cut[i] != 0;
    head(w, 5, ncut ? 7 : 6);
    head(w, 0, 0), head(w, 0, 1);
    head(w, 0, 1), head(w, 5, 2);
    text(w, "service.name", &ignored), text(w, t->service, &ignored);
    text(w, "device.id", &ignored), text(w, t->device, &ignored);
    head(w, 0, 2), head(w, 4, 2), text(w, "helix.c", &ignored), text(w, HX_VERSION, &ignored);
    head(w, 0, 6), head(w, 0, t->run);
    head(w, 0, 4), head(w, 0, seq);
    if (ncut) {
        head(w, 0, 5), head(w, 5, (uint64_t)ncut);
        for (i = 0; i < 4; i++)
            if (cut[i]) head(w, 0, (uint64_t)i + 1), head(w, 0, cut[i]);
    }
    head(w, 0, 3), head(w, 4, nspans);
}

int hx_tracer_init(hx_tracer *t, uint8_t *buf, size_t cap, const char *service_name, const char *device_id,
                   const hx_hooks *hooks) {
    static const uint32_t worst[4] = {0xffffffffu, 0xffffffffu, 0xffffffffu, 0xffffffffu};
    wr w = {0, 0, (size_t)-1, 0};
    memset(t, 0, sizeof *t);
    if (!buf || !hooks || !hooks->random || !hooks->mono_ns || !hooks->publish) return -1;
    t->hooks = *hooks;
    t->service = service_name ? service_name : "";
    t->device = device_id ? device_id : t->service;
    t->run = 0xffffffffu; /* the largest, to measure the header */
    envelope(&w, t, 0xffffffffu, worst, MAX_SPANS);
    t->hooks.random(t->hooks.user, (uint8_t *)&t->run, sizeof t->run);
    t->buf = buf, t->cap = cap, t->head = t->len = w.n;
    return cap >= w.n + 96 ? 0 : -1;
}

void hx_span_start(hx_tracer *t, hx_span *s, const char *name, uint8_t kind, const hx_span *parent,
                   const hx_context *remote) {
    uint64_t now = t->hooks.mono_ns(t->hooks.user);
    memset(s, 0, offsetof(hx_span, data));
    s->tracer = t, s->name = name, s->kind = kind, s->flags = 1;
    if (parent) {
        memcpy(s->trace_id, parent->trace_id, 16);
        memcpy(s->parent_id, parent->span_id, 8);
        s->has_parent = 1, s->flags = parent->flags, s->state = parent->state, s->state_len = parent->state_len;
    } else {
        s->local_root = 1;
        if (t->hooks.wall_ns) t->wall_offset = (int64_t)(t->hooks.wall_ns(t->hooks.user) - now);
        if (remote && remote->valid) {
            memcpy(s->trace_id, remote->trace_id, 16);
            memcpy(s->parent_id, remote->span_id, 8);
            s->has_parent = 1, s->flags = remote->flags, s->state = remote->state, s->state_len = remote->state_len;
        } else {
            random_id(t, s->trace_id, 16);
        }
    }
    random_id(t, s->span_id, 8);
    s->start_mono = now;
    s->start_ns = now + (uint64_t)t->wall_offset;
}

/* A writer over the span's free bytes, after its attributes and events. */
static wr tail(hx_span *s) {
    wr w = {s->data + s->attr_len + s->event_len, 0, (size_t)HX_SPAN_BUFFER - s->attr_len - s->event_len, 0};
    return w;
}

static void attr_begin(hx_span *s, wr *w, const char *key, uint32_t *cut) {
    *w = tail(s);
    if (s->ended || s->nattrs >= MAX_ATTRS) w->err = 1;
    text(w, key, cut);
}

/* Moves the attribute just written after the events in front of them, or counts it as cut. */
static void attr_end(hx_span *s, wr *w, uint32_t cut) {
    uint8_t *a = s->data + s->attr_len;
    if (w->err || s->ended) {
        if (!s->ended) s->tracer->cut[HX_CUT_ATTRIBUTES]++;
        return;
    }
    reverse(a, s->event_len), reverse(a + s->event_len, w->n), reverse(a, s->event_len + w->n);
    s->attr_len = (uint16_t)(s->attr_len + w->n);
    s->nattrs++;
    s->tracer->cut[HX_CUT_STRINGS] += cut;
}

void hx_span_set_str(hx_span *s, const char *key, const char *value) {
    wr w;
    uint32_t cut = 0;
    attr_begin(s, &w, key, &cut);
    text(&w, value, &cut);
    attr_end(s, &w, cut);
}

void hx_span_set_int(hx_span *s, const char *key, int64_t value) {
    wr w;
    uint32_t cut = 0;
    attr_begin(s, &w, key, &cut);
    if (value >= 0) head(&w, 0, (uint64_t)value);
    else head(&w, 1, (uint64_t)(-(value + 1)));
    attr_end(s, &w, cut);
}

void hx_span_set_double(hx_span *s, const char *key, double value) {
    wr w;
    uint32_t cut = 0;
    uint64_t bits;
    uint8_t b[9];
    int i;
    memcpy(&bits, &value, 8);
    b[0] = 0xfb;
    for (i = 8; i > 0; i--, bits >>= 8) b[i] = (uint8_t)bits;
    attr_begin(s, &w, key, &cut);
    put(&w, b, 9);
    attr_end(s, &w, cut);
}

void hx_span_set_bool(hx_span *s, const char *key, int value) {
    wr w;
    uint32_t cut = 0;
    uint8_t b = value ? 0xf5 : 0xf4;
    attr_begin(s, &w, key, &cut);
    put(&w, &b, 1);
    attr_end(s, &w, cut);
}

void hx_span_add_event(hx_span *s, const char *name) {
    wr w = tail(s);
    uint32_t cut = 0;
    if (s->ended) return;
    if (s->nevents >= MAX_EVENTS) w.err = 1;
    head(&w, 4, 2);
    text(&w, name, &cut);
    head(&w, 0, s->tracer->hooks.mono_ns(s->tracer->hooks.user) - s->start_mono);
    if (w.err) {
        s->tracer->cut[HX_CUT_EVENTS]++;
        return;
    }
    s->event_len = (uint16_t)(s->event_len + w.n);
    s->nevents++;
    s->tracer->cut[HX_CUT_STRINGS] += cut;
}

void hx_span_set_status(hx_span *s, uint8_t status, const char *message) {
    s->status = status > HX_STATUS_ERROR ? HX_STATUS_ERROR : status;
    s->status_msg = status == HX_STATUS_ERROR ? message : 0;
}

/* Appends the span to the message; with full = 0 without its attributes and events. 1 if it fitted. */
static int append(hx_tracer *t, const hx_span *s, int full) {
    wr w = {t->buf + t->len, 0, t->cap - t->len, 0};
    uint32_t cut = 0;
    unsigned attrs = full && s->nattrs, events = full && s->nevents;
    unsigned msg = s->status_msg && s->status_msg[0];
    head(&w, 5, 5u + s->has_parent + (s->kind != 1) + (s->status != 0) + msg + attrs + events + (s->state_len != 0)
                    + (s->flags != 1));
    head(&w, 0, 1), bytes(&w, s->trace_id, 16);
    head(&w, 0, 2), bytes(&w, s->span_id, 8);
    if (s->has_parent) head(&w, 0, 3), bytes(&w, s->parent_id, 8);
    head(&w, 0, 4), text(&w, s->name, &cut);
    if (s->kind != 1) head(&w, 0, 5), head(&w, 0, s->kind > 5 ? 1 : s->kind);
    head(&w, 0, 6), head(&w, 0, s->start_ns);
    head(&w, 0, 7), head(&w, 0, s->end_ns - s->start_ns);
    if (s->status) head(&w, 0, 8), head(&w, 0, s->status);
    if (msg) head(&w, 0, 9), text(&w, s->status_msg, &cut);
    if (attrs) head(&w, 0, 10), head(&w, 5, s->nattrs), put(&w, s->data, s->attr_len);
    if (events) head(&w, 0, 11), head(&w, 4, s->nevents), put(&w, s->data + s->attr_len, s->event_len);
    if (s->state_len) {
        head(&w, 0, 13), head(&w, 3, s->state_len);
        put(&w, s->state, s->state_len);
    }
    if (s->flags != 1) head(&w, 0, 14), head(&w, 0, s->flags);
    if (w.err) return 0;
    t->len += w.n;
    t->nspans++;
    t->cut[HX_CUT_STRINGS] += cut;
    if (!full) t->cut[HX_CUT_ATTRIBUTES] += s->nattrs, t->cut[HX_CUT_EVENTS] += s->nevents;
    return 1;
}

void hx_span_end(hx_span *s) {
    hx_tracer *t = s->tracer;
    if (s->ended) return;
    s->ended = 1;
    s->end_ns = s->start_ns + (t->hooks.mono_ns(t->hooks.user) - s->start_mono);
    if (t->nspans >= MAX_SPANS || !append(t, s, 1)) {
        if (t->nspans) hx_flush(t);
        if (!append(t, s, 1) && !append(t, s, 0)) t->cut[HX_CUT_SPANS]++;
    }
    if (s->local_root) hx_flush(t);
}

int hx_flush(hx_tracer *t) {
    wr w = {t->buf, 0, t->head, 0};
    int rc, i;
    uint8_t *msg;
    uint32_t any = 0;
    for (i = 0; i < 4; i++) any |= t->cut[i];
    if (!t->nspans && !any) return 0;
    envelope(&w, t, t->seq, t->cut, t->nspans); /* fits: head was measured with the largest numbers */
    msg = t->buf + t->head - w.n;
    memmove(msg, t->buf, w.n);
    rc = t->hooks.publish(t->hooks.user, msg, w.n + t->len - t->head);
    if (rc) t->publish_failures++;
    else t->published++;
    t->seq++; /* a failed publish leaves a gap the agent counts */
    t->len = t->head;
    t->nspans = 0;
    memset(t->cut, 0, sizeof t->cut);
    return rc;
}

void hx_span_context(const hx_span *s, hx_context *out) {
    memset(out, 0, offsetof(hx_context, state));
    memcpy(out->trace_id, s->trace_id, 16);
    memcpy(out->span_id, s->span_id, 8);
    out->flags = s->flags, out->valid = 1;
    if (s->state_len && s->state_len <= HX_TRACESTATE_MAX) {
        memcpy(out->state, s->state, s->state_len);
        out->state_len = s->state_len;
    }
}

static const char HEX[] = "0123456789abcdef";

static char *hex(char *o, const uint8_t *b, size_t n) {
    size_t i;
    for (i = 0; i < n; i++) *o++ = HEX[b[i] >> 4], *o++ = HEX[b[i] & 15];
    return o;
}

void hx_inject(const hx_context *ctx, char out[HX_TRACEPARENT_LEN + 1]) {
    char *o = out;
    *o++ = '0', *o++ = '0', *o++ = '-';
    o = hex(o, ctx->trace_id, 16);
    *o++ = '-';
    o = hex(o, ctx->span_id, 8);
    *o++ = '-';
    o = hex(o, &ctx->flags, 1);
    *o = 0;
}

/* Lower-case hex only, as W3C Trace Context requires; 0 on a bad digit. */
static int unhex(const char *s, uint8_t *out, size_t n) {
    size_t i;
    uint8_t any = 0;
    for (i = 0; i < 2 * n; i++) {
        char c = s[i];
        uint8_t v = c >= '0' && c <= '9' ? (uint8_t)(c - '0') : c >= 'a' && c <= 'f' ? (uint8_t)(c - 'a' + 10) : 16;
        if (v > 15) return 0;
        if (i & 1) out[i / 2] = (uint8_t)(out[i / 2] << 4 | v);
        else out[i / 2] = v;
    }
    for (i = 0; i < n; i++) any |= out[i];
    return any != 0 || n == 1;
}

static int parse_traceparent(hx_context *ctx, const char *v, size_t n) {
    uint8_t version;
    ctx->valid = 0;
    if (!v || n < HX_TRACEPARENT_LEN || !unhex(v, &version, 1) || version == 0xff) return 0;
    /* Version 00 is exactly 55 characters; a later version may append fields after a '-'. */
    if (n > HX_TRACEPARENT_LEN && (version == 0 || v[HX_TRACEPARENT_LEN] != '-')) return 0;
    if (v[2] != '-' || v[35] != '-' || v[52] != '-') return 0;
    if (!unhex(v + 3, ctx->trace_id, 16) || !unhex(v + 36, ctx->span_id, 8) || !unhex(v + 53, &ctx->flags, 1))
        return 0;
    return ctx->valid = 1;
}

static void store_tracestate(hx_context *ctx, const char *v, size_t n) {
    size_t i;
    ctx->state_len = 0;
    if (!v || n > HX_TRACESTATE_MAX || n > 255) return;
    for (i = 0; i < n; i++)
        if (v[i] < 0x20 || v[i] > 0x7e) return; /* printable ASCII only (W3C); anything else drops it */
    memmove(ctx->state, v, n); /* v may be this context's own state */
    ctx->state_len = (uint8_t)n;
}

void hx_context_clear(hx_context *ctx) { memset(ctx, 0, offsetof(hx_context, state)); }

int hx_extract(hx_context *ctx, const char *tp, size_t tp_len, const char *ts, size_t ts_len) {
    hx_context_clear(ctx);
    parse_traceparent(ctx, tp, tp_len);
    if (ctx->valid && ts) store_tracestate(ctx, ts, ts_len);
    return ctx->valid ? 0 : -1;
}

static int key_is(const char *k, size_t n, const char *name) {
    size_t i;
    for (i = 0; i < n; i++)
        if (!name[i] || (k[i] | 0x20) != name[i]) return 0;
    return k && !name[n];
}

int hx_extract_pair(hx_context *ctx, const char *key, size_t key_len, const char *value, size_t value_len) {
    if (!key) return ctx->valid;
    if (!(ctx->seen & 1) && key_is(key, key_len, "traceparent")) {
        ctx->seen |= 1;
        parse_traceparent(ctx, value, value_len);
    } else if (!(ctx->seen & 2) && key_is(key, key_len, "tracestate")) {
        ctx->seen |= 2;
        store_tracestate(ctx, value, value_len);
    }
    return ctx->valid;
}
