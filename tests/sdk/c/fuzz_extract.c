/* libFuzzer target for the receiving side: arbitrary user properties (keys, values, sizes) fed to extract, then
 * whatever came out used as a parent and injected again; plus arbitrary text as names, keys and values. Built
 * with -fsanitize=fuzzer,address,undefined: any read or write out of bounds, or undefined behaviour, stops it. */
#include <stdlib.h>
#include <string.h>

#include "helix_trace.h"

static uint64_t clock_ns;
static void rnd(void *u, uint8_t *out, size_t n) { (void)u; memset(out, 0, n); } /* all zero: ids must still be valid */
static uint64_t mono(void *u) { (void)u; return clock_ns += 7; }
static int publish(void *u, const uint8_t *m, size_t n) { (void)u; (void)m; return n == 0; }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static uint8_t buf[512];
    hx_tracer t;
    hx_hooks hooks = {rnd, mono, 0, publish, 0};
    hx_context ctx, out;
    hx_span root, child;
    char tp[HX_TRACEPARENT_LEN + 1];
    size_t pos = 0;
    /* Pairs: [key length][value length (2 bytes)][key][value], each copied to its own heap block of exactly
     * that size so ASan sees any read past the end. */
    hx_context_clear(&ctx);
    while (pos + 3 <= size) {
        size_t kl = data[pos], vl = (size_t)data[pos + 1] << 8 | data[pos + 2];
        char *k, *v;
        pos += 3;
        if (kl > size - pos) kl = size - pos;
        if (vl > size - pos - kl) vl = size - pos - kl;
        k = malloc(kl ? kl : 1), v = malloc(vl ? vl : 1);
        memcpy(k, data + pos, kl);
        memcpy(v, data + pos + kl, vl);
        hx_extract_pair(&ctx, k, kl, v, vl);
        hx_extract(&out, v, vl, k, kl);
        if (out.valid) {
            hx_inject(&out, tp);
            if (hx_extract(&out, tp, HX_TRACEPARENT_LEN, out.state, out.state_len) != 0) abort();
        }
        free(k), free(v);
        pos += kl + vl;
    }
    if (hx_tracer_init(&t, buf, sizeof buf, "fuzz", "fuzz", &hooks) != 0) abort();
    {
        char *s = malloc(size + 1); /* the whole input as NUL-terminated text */
        memcpy(s, data, size);
        s[size] = 0;
        hx_span_start(&t, &root, s, (uint8_t)(size % 7), 0, &ctx);
        hx_span_set_str(&root, s, s);
        hx_span_add_event(&root, s);
        hx_span_start(&t, &child, s, HX_KIND_CLIENT, &root, 0);
        hx_span_set_status(&child, (uint8_t)size, s);
        hx_span_set_double(&child, s, (double)size);
        hx_span_end(&child);
        hx_span_context(&child, &out);
        hx_inject(&out, tp);
        hx_span_end(&root);
        free(s);
    }
    return 0;
}
