/* Times the C device SDK on this machine: traces of a root with four attributes and two children, encoded into
 * messages handed to a publish hook that only counts bytes. Prints ns per span. Built by bench/c_sdk.py. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "helix_trace.h"

static size_t bytes_out, messages;
static uint64_t x = 88172645463325252ull;

static void rnd(void *u, uint8_t *out, size_t n) { /* xorshift: the device's RNG stands in here */
    (void)u;
    while (n--) x ^= x << 13, x ^= x >> 7, x ^= x << 17, *out++ = (uint8_t)x;
}
static uint64_t now(clockid_t id) {
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}
static uint64_t mono(void *u) { (void)u; return now(CLOCK_MONOTONIC); }
static uint64_t wall(void *u) { (void)u; return now(CLOCK_REALTIME); }
static int publish(void *u, const uint8_t *m, size_t n) { (void)u; (void)m; bytes_out += n; messages++; return 0; }

int main(int argc, char **argv) {
    static uint8_t buf[1024];
    hx_tracer t;
    hx_hooks hooks = {rnd, mono, wall, publish, 0};
    long traces = argc > 1 ? atol(argv[1]) : 200000, i;
    uint64_t t0;
    if (hx_tracer_init(&t, buf, sizeof buf, "bench-device", "bench-device", &hooks)) return 1;
    t0 = now(CLOCK_MONOTONIC);
    for (i = 0; i < traces; i++) {
        hx_span root, a, b;
        hx_span_start(&t, &root, "handleCommand", HX_KIND_CONSUMER, 0, 0);
        hx_span_set_str(&root, "device.mode", "auto");
        hx_span_set_int(&root, "cycle", i);
        hx_span_set_double(&root, "setpoint", 21.5);
        hx_span_set_bool(&root, "manual", 0);
        hx_span_start(&t, &a, "readSensor", HX_KIND_INTERNAL, &root, 0);
        hx_span_end(&a);
        hx_span_start(&t, &b, "actuateValve", HX_KIND_INTERNAL, &root, 0);
        hx_span_end(&b);
        hx_span_end(&root);
    }
    printf("%.1f %zu %zu\n", (double)(now(CLOCK_MONOTONIC) - t0) / (3.0 * (double)traces), messages,
           bytes_out / messages);
    return 0;
}
