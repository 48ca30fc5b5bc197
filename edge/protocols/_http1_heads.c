/* Whole HTTP/1.x heads of CRLF lines, parsed in C: the common case of edge/protocols/http1.py's _request_at and
 * _response_at (the shape its _REQUEST_HEAD and _RESPONSE_HEAD patterns match), giving the very HttpRequest and
 * HttpResponse the Python code gives. Anything else (a head cut by the snapshot, bare-LF lines, folding, 100 or more
 * header lines, CONNECT, absolute-form targets, no HTTP at all) returns None and the Python code decides, so the C
 * code never has to agree with the general path, only with the fast one; tests/edge/protocols/test_http1_heads.py
 * compares the two on random and hostile input.
 *
 * Every byte comes from another process: each read is bounds-checked against the buffer's length, nothing
 * recurses, loops are bounded by the buffer or by the caps the Python code uses. Plain C99 and the stable parts of the
 * CPython API, nothing architecture-specific (the devices are aarch64).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_HEADERS 100   /* http1.MAX_HEADERS: at this many header lines the Python code takes its general path */
#define MAX_METHOD 7      /* len("OPTIONS") */
#define CHUNK_LINE 1024   /* chunked_body_end: a chunk-size line is looked for this far */
#define CHUNK_FIELD 16    /* chunked_body_end: hex digits of a chunk size */
#define MAX_CHUNKS 4096   /* chunked_body_end: chunks walked */
#define CL_DIGITS 18      /* _content_length: digits of a Content-Length */

static PyObject *s_methods[9];
static const char *const METHOD_NAMES[9] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT",
                                            "TRACE"};
static PyObject *s_v10, *s_v11, *s_empty, *s_star;
/* Header names most heads carry, made once: a key made per header costs an allocation and a hash. */
#define N_KNOWN 24
static const char *const KNOWN_NAMES[N_KNOWN] = {
    "host", "user-agent", "accept", "accept-encoding", "accept-language", "connection", "content-type",
    "content-length", "transfer-encoding", "traceparent", "tracestate", "baggage", "b3", "x-b3-traceid",
    "x-b3-spanid", "x-b3-parentspanid", "x-b3-sampled", "x-b3-flags", "date", "server", "cache-control",
    "keep-alive", "upgrade", "x-request-id"};
static PyObject *s_known[N_KNOWN];
static Py_ssize_t s_known_len[N_KNOWN];

static int is_token(unsigned char c)
{
    if (c >= '0' && c <= '9') return 1;
    if ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') return 1;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* _VALUE: tab, visible ASCII, space, obs-text. */
static int is_value(unsigned char c) { return c == '\t' || (c >= 0x20 && c != 0x7f); }

/* _TARGET: visible ASCII and obs-text. */
static int is_target(unsigned char c) { return c > 0x20 && c != 0x7f; }

/* What Python's str.strip() removes among the characters a header value may hold (latin-1 decoded). */
static int is_str_space(unsigned char c) { return c == ' ' || c == '\t' || c == 0x85 || c == 0xa0; }

/* What bytes.strip() removes. */
static int is_bytes_space(unsigned char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == 0x0b || c == 0x0c;
}

static int hex_value(unsigned char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

static int ieq(const unsigned char *p, Py_ssize_t n, const char *lower)
{
    Py_ssize_t k = (Py_ssize_t)strlen(lower);
    if (n != k) return 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = p[i];
        if (c >= 'A' && c <= 'Z') c = (unsigned char)(c | 0x20);
        if (c != (unsigned char)lower[i]) return 0;
    }
    return 1;
}

static void strip_str(const unsigned char *p, Py_ssize_t *a, Py_ssize_t *b)
{
    while (*a < *b && is_str_space(p[*a])) (*a)++;
    while (*b > *a && is_str_space(p[*b - 1])) (*b)--;
}

/* http1._content_length on the first Content-Length value (already stripped of spaces and tabs): -1 when none. */
static long long content_length(const unsigned char *p, Py_ssize_t a, Py_ssize_t b)
{
    Py_ssize_t va = a, vb = b;
    const unsigned char *comma = memchr(p + a, ',', (size_t)(b - a));
    if (comma != NULL) {
        /* A list is valid when every member, stripped, is the same. */
        Py_ssize_t s = a, first_a = -1, first_b = -1;
        for (;;) {
            const unsigned char *c = memchr(p + s, ',', (size_t)(b - s));
            Py_ssize_t e = c ? (Py_ssize_t)(c - p) : b;
            Py_ssize_t ma = s, mb = e;
            strip_str(p, &ma, &mb);
            if (first_a < 0) {
                first_a = ma;
                first_b = mb;
            } else if (mb - ma != first_b - first_a || memcmp(p + ma, p + first_a, (size_t)(mb - ma)) != 0) {
                return -1;
            }
            if (!c) break;
            s = e + 1;
        }
        va = first_a;
        vb = first_b;
    } else {
        strip_str(p, &va, &vb);
    }
    if (vb <= va || vb - va > CL_DIGITS) return -1;
    long long v = 0;
    for (Py_ssize_t i = va; i < vb; i++) {
        if (p[i] < '0' || p[i] > '9') return -1;
        v = v * 10 + (p[i] - '0');
    }
    return v;
}

/* http1._is_chunked on the first Transfer-Encoding value: its last member is "chunked". */
static int is_chunked(const unsigned char *p, Py_ssize_t a, Py_ssize_t b)
{
    if (b <= a) return 0;
    Py_ssize_t s = b;
    while (s > a && p[s - 1] != ',') s--;
    Py_ssize_t e = b;
    strip_str(p, &s, &e);
    return ieq(p + s, e - s, "chunked");
}

static Py_ssize_t find_byte(const unsigned char *p, Py_ssize_t from, Py_ssize_t to, unsigned char c)
{
    if (from >= to) return -1;
    const unsigned char *r = memchr(p + from, c, (size_t)(to - from));
    return r ? (Py_ssize_t)(r - p) : -1;
}

/* http1.chunked_body_end: the offset just past a chunked body starting at pos, or -1. */
static Py_ssize_t chunked_end(const unsigned char *p, Py_ssize_t n, Py_ssize_t pos)
{
    for (int chunk = 0; chunk < MAX_CHUNKS; chunk++) {
        Py_ssize_t lim = pos <= n - CHUNK_LINE ? pos + CHUNK_LINE : n;
        Py_ssize_t eol = find_byte(p, pos, lim, '\n');
        if (eol < 0) return -1;
        Py_ssize_t a = pos, b = eol;
        while (b > a && p[b - 1] == '\r') b--;
        Py_ssize_t semi = find_byte(p, a, b, ';');
        if (semi >= 0) b = semi;
        while (a < b && is_bytes_space(p[a])) a++;
        while (b > a && is_bytes_space(p[b - 1])) b--;
        if (b <= a || b - a > CHUNK_FIELD) return -1;
        uint64_t size = 0;
        for (Py_ssize_t i = a; i < b; i++) {
            int h = hex_value(p[i]);
            if (h < 0) return -1;
            size = (size << 4) | (uint64_t)h;
        }
        pos = eol + 1;
        if (size == 0) {
            for (;;) { /* trailer section, ended by an empty line; each turn moves pos on */
                eol = find_byte(p, pos, n, '\n');
                if (eol < 0) return -1;
                Py_ssize_t e = eol;
                while (e > pos && p[e - 1] == '\r') e--;
                int empty = e == pos;
                pos = eol + 1;
                if (empty) return pos;
            }
        }
        if (size > (uint64_t)(n - pos)) return -1; /* its end lies past the snapshot */
        pos += (Py_ssize_t)size;
        if (pos + 1 < n && p[pos] == '\r' && p[pos + 1] == '\n') pos += 2;
        else if (pos < n && p[pos] == '\n') pos += 1;
        else return -1;
        if (pos >= n) return -1;
    }
    return -1;
}

/* Where the header lines of a head end, when they follow the fast path's shape from `pos` (just past the request or
 * status line, at its CRLF): each line CRLF token ':' value, then CRLF CRLF. Returns the offset past the blank line,
 * or -1 when the shape does not hold (or there are MAX_HEADERS lines or more). */
static Py_ssize_t header_block_end(const unsigned char *p, Py_ssize_t n, Py_ssize_t pos)
{
    int lines = 0;
    for (;;) {
        if (pos + 1 >= n || p[pos] != '\r' || p[pos + 1] != '\n') return -1;
        pos += 2;
        if (pos + 1 < n && p[pos] == '\r' && p[pos + 1] == '\n') return lines < MAX_HEADERS ? pos + 2 : -1;
        Py_ssize_t name = pos;
        while (pos < n && is_token(p[pos])) pos++;
        if (pos == name || pos >= n || p[pos] != ':') return -1;
        pos++;
        while (pos < n && is_value(p[pos])) pos++;
        lines++;
    }
}

struct head_headers {
    PyObject *dict;
    Py_ssize_t host_a, host_b; /* the first value of each, -1 when absent */
    Py_ssize_t cl_a, cl_b;
    Py_ssize_t te_a, te_b;
};

/* The header lines between `pos` (at the CRLF ending the first line) and `end` (past the blank line), which
 * header_block_end checked, into a dict of lower-cased names to their first values (as http1._fast_headers). */
static int build_headers(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end, struct head_headers *h)
{
    h->host_a = h->cl_a = h->te_a = -1;
    h->host_b = h->cl_b = h->te_b = -1;
    h->dict = PyDict_New();
    if (h->dict == NULL) return -1;
    Py_ssize_t last = end - 4; /* the CRLF CRLF */
    while (pos < last) {
        pos += 2;
        Py_ssize_t name = pos;
        while (p[pos] != ':') pos++;
        Py_ssize_t name_end = pos;
        Py_ssize_t va = pos + 1, vb = va;
        while (p[vb] != '\r') vb++;
        pos = vb;
        while (va < vb && (p[va] == ' ' || p[va] == '\t')) va++;
        while (vb > va && (p[vb - 1] == ' ' || p[vb - 1] == '\t')) vb--;
        PyObject *key = NULL;
        for (int k = 0; k < N_KNOWN; k++) {
            if (name_end - name == s_known_len[k] && ieq(p + name, name_end - name, KNOWN_NAMES[k])) {
                key = Py_NewRef(s_known[k]);
                break;
            }
        }
        if (key == NULL) {
            key = PyUnicode_New(name_end - name, 127);
            if (key == NULL) goto fail;
            Py_UCS1 *kd = PyUnicode_1BYTE_DATA(key);
            for (Py_ssize_t i = name; i < name_end; i++) {
                unsigned char c = p[i];
                kd[i - name] = (Py_UCS1)(c >= 'A' && c <= 'Z' ? c | 0x20 : c);
            }
        }
        int has = PyDict_Contains(h->dict, key);
        if (has < 0) {
            Py_DECREF(key);
            goto fail;
        }
        if (!has) {
            PyObject *value = PyUnicode_DecodeLatin1((const char *)p + va, vb - va, NULL);
            if (value == NULL || PyDict_SetItem(h->dict, key, value) < 0) {
                Py_XDECREF(value);
                Py_DECREF(key);
                goto fail;
            }
            Py_DECREF(value);
            const unsigned char *nm = p + name;
            Py_ssize_t nl = name_end - name;
            if (nl == 4 && ieq(nm, nl, "host")) {
                h->host_a = va;
                h->host_b = vb;
            } else if (nl == 14 && ieq(nm, nl, "content-length")) {
                h->cl_a = va;
                h->cl_b = vb;
            } else if (nl == 17 && ieq(nm, nl, "transfer-encoding")) {
                h->te_a = va;
                h->te_b = vb;
            }
        }
        Py_DECREF(key);
    }
    return 0;
fail:
    Py_CLEAR(h->dict);
    return -1;
}

static PyObject *py_int_or_none(long long v)
{
    if (v < 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(v);
}

/* The integer fields both head classes share, as Python objects (None for -1). */
struct head_ints {
    PyObject *content_length, *offset, *head_length, *length;
};

static int head_ints_make(struct head_ints *t, long long clen, Py_ssize_t start, Py_ssize_t head_len, long long total)
{
    t->content_length = py_int_or_none(clen);
    t->length = py_int_or_none(total);
    t->offset = PyLong_FromSsize_t(start);
    t->head_length = PyLong_FromSsize_t(head_len);
    return t->content_length && t->length && t->offset && t->head_length ? 0 : -1;
}

static void head_ints_clear(struct head_ints *t)
{
    Py_XDECREF(t->content_length);
    Py_XDECREF(t->offset);
    Py_XDECREF(t->head_length);
    Py_XDECREF(t->length);
}

static int get_start(PyObject *obj, Py_ssize_t *start)
{
    *start = PyLong_AsSsize_t(obj);
    if (*start == -1 && PyErr_Occurred()) return -1;
    return 0;
}

/* request_head(data, start, cls): the HttpRequest (made by calling cls) of the whole CRLF head at data[start:], or
 * None where the Python code must decide. */
static PyObject *request_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "request_head(data, start, cls)");
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = buf.buf;
    Py_ssize_t n = buf.len, start;
    PyObject *result = NULL, *target = NULL, *path = NULL, *query = NULL, *host = NULL;
    struct head_headers h = {0};
    struct head_ints t = {0};
    if (get_start(args[1], &start) < 0) goto done;
    if (start < 0 || start >= n) goto none;

    /* Method: one of METHODS, then a space (http1._request_at's first test). */
    Py_ssize_t sp = find_byte(p, start, start + MAX_METHOD + 1 < n ? start + MAX_METHOD + 1 : n, ' ');
    if (sp <= start) goto none;
    int mi = -1;
    for (int i = 0; i < 9; i++) {
        size_t ml = strlen(METHOD_NAMES[i]);
        if ((Py_ssize_t)ml == sp - start && memcmp(p + start, METHOD_NAMES[i], ml) == 0) {
            mi = i;
            break;
        }
    }
    if (mi < 0 || mi == 7) goto none; /* CONNECT: authority-form targets are the Python code's */
    Py_ssize_t ta = sp + 1, tb = ta;
    while (tb < n && is_target(p[tb])) tb++;
    if (tb == ta) goto none;
    /* Origin-form and "*" only; absolute-form targets go through urlsplit in the Python code. */
    if (p[ta] != '/' && !(tb - ta == 1 && p[ta] == '*')) goto none;
    if (n - tb < 9 || memcmp(p + tb, " HTTP/1.", 8) != 0 || (p[tb + 8] != '0' && p[tb + 8] != '1')) goto none;
    PyObject *version = p[tb + 8] == '1' ? s_v11 : s_v10;
    Py_ssize_t end = header_block_end(p, n, tb + 9);
    if (end < 0) goto none;
    Py_ssize_t head_len = end - start;

    if (build_headers(p, tb + 9, end, &h) < 0) goto done;
    target = PyUnicode_DecodeUTF8((const char *)p + ta, tb - ta, "replace");
    if (target == NULL) goto done;
    if (p[ta] == '*') {
        path = Py_NewRef(s_star);
        query = Py_NewRef(s_empty);
    } else {
        Py_ssize_t tlen = PyUnicode_GET_LENGTH(target);
        Py_ssize_t q = PyUnicode_FindChar(target, '?', 0, tlen, 1);
        if (q == -2) goto done;
        if (q < 0) {
            path = Py_NewRef(target);
            query = Py_NewRef(s_empty);
        } else {
            Py_ssize_t hash = PyUnicode_FindChar(target, '#', q + 1, tlen, 1);
            if (hash == -2) goto done;
            path = PyUnicode_Substring(target, 0, q);
            query = PyUnicode_Substring(target, q + 1, hash < 0 ? tlen : hash);
            if (path == NULL || query == NULL) goto done;
        }
    }
    if (h.host_a >= 0 && h.host_b > h.host_a) {
        host = PyUnicode_DecodeLatin1((const char *)p + h.host_a, h.host_b - h.host_a, NULL);
        if (host == NULL) goto done;
    } else {
        host = Py_NewRef(s_empty);
    }
    long long clen = h.cl_a >= 0 ? content_length(p, h.cl_a, h.cl_b) : -1;
    int chunked = h.te_a >= 0 && is_chunked(p, h.te_a, h.te_b);
    long long total = -1;
    if (chunked) {
        Py_ssize_t e = chunked_end(p, n, end);
        total = e < 0 ? -1 : e - start;
    } else if (clen >= 0) {
        total = head_len + clen;
    } else if (h.te_a < 0) {
        total = head_len; /* neither header: no body */
    }
    if (head_ints_make(&t, clen, start, head_len, total) < 0) goto done;
    {
        PyObject *call_args[13] = {s_methods[mi], target, path, query, version, h.dict, host, Py_False,
                                   t.content_length, chunked ? Py_True : Py_False, t.offset, t.head_length, t.length};
        result = PyObject_Vectorcall(args[2], call_args, 13, NULL);
    }
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(h.dict);
    Py_XDECREF(target);
    Py_XDECREF(path);
    Py_XDECREF(query);
    Py_XDECREF(host);
    head_ints_clear(&t);
    PyBuffer_Release(&buf);
    return result;
}

/* response_head(data, start, request_method, cls): the HttpResponse (made by calling cls) of the whole CRLF head at
 * data[start:], or None where the Python code must decide. */
static PyObject *response_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 4 || !PyUnicode_Check(args[2])) {
        PyErr_SetString(PyExc_TypeError, "response_head(data, start, request_method: str, cls)");
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_SIMPLE) < 0) return NULL;
    const unsigned char *p = buf.buf;
    Py_ssize_t n = buf.len, start;
    PyObject *result = NULL, *reason = NULL, *status_obj = NULL;
    struct head_headers h = {0};
    struct head_ints t = {0};
    if (get_start(args[1], &start) < 0) goto done;
    if (start < 0 || n - start < 12) goto none;
    /* HTTP/1.x NNN: the version, a space, a status of three digits not starting with 0. */
    if (memcmp(p + start, "HTTP/1.", 7) != 0 || (p[start + 7] != '0' && p[start + 7] != '1') || p[start + 8] != ' ')
        goto none;
    const unsigned char *sd = p + start + 9;
    if (sd[0] < '1' || sd[0] > '9' || sd[1] < '0' || sd[1] > '9' || sd[2] < '0' || sd[2] > '9') goto none;
    long status = (sd[0] - '0') * 100 + (sd[1] - '0') * 10 + (sd[2] - '0');
    PyObject *version = p[start + 7] == '1' ? s_v11 : s_v10;
    Py_ssize_t pos = start + 12, ra = pos, rb = pos;
    if (pos < n && p[pos] == ' ') {
        ra = rb = pos + 1;
        while (rb < n && is_value(p[rb])) rb++;
        pos = rb;
    }
    Py_ssize_t end = header_block_end(p, n, pos);
    if (end < 0) goto none;
    Py_ssize_t head_len = end - start;

    if (build_headers(p, pos, end, &h) < 0) goto done;
    reason = PyUnicode_DecodeLatin1((const char *)p + ra, rb - ra, NULL);
    if (reason == NULL) goto done;
    long long clen = h.cl_a >= 0 ? content_length(p, h.cl_a, h.cl_b) : -1;
    int chunked = h.te_a >= 0 && is_chunked(p, h.te_a, h.te_b);
    PyObject *method = args[2];
    long long total = -1;
    if ((status >= 100 && status < 200) || status == 204 || status == 304 ||
        PyUnicode_CompareWithASCIIString(method, "HEAD") == 0) {
        total = head_len;
    } else if (PyUnicode_CompareWithASCIIString(method, "CONNECT") == 0 && status >= 200 && status < 300) {
        total = -1; /* a tunnel follows, not HTTP */
    } else if (chunked) {
        Py_ssize_t e = chunked_end(p, n, end);
        total = e < 0 ? -1 : e - start;
    } else if (clen >= 0) {
        total = head_len + clen;
    }
    status_obj = PyLong_FromLong(status);
    if (status_obj == NULL || head_ints_make(&t, clen, start, head_len, total) < 0) goto done;
    {
        PyObject *call_args[10] = {status_obj, reason, version, h.dict, Py_False, t.content_length,
                                   chunked ? Py_True : Py_False, t.offset, t.head_length, t.length};
        result = PyObject_Vectorcall(args[3], call_args, 10, NULL);
    }
    goto done;
none:
    result = Py_NewRef(Py_None);
done:
    Py_XDECREF(h.dict);
    Py_XDECREF(reason);
    Py_XDECREF(status_obj);
    head_ints_clear(&t);
    PyBuffer_Release(&buf);
    return result;
}

/* chunked_body_end(data, pos): as http1.chunked_body_end. */
static PyObject *chunked_body_end(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "chunked_body_end(data, pos)");
        return NULL;
    }
    Py_buffer buf;
    if (PyObject_GetBuffer(args[0], &buf, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t pos = PyLong_AsSsize_t(args[1]);
    PyObject *result = NULL;
    if (pos == -1 && PyErr_Occurred()) goto done;
    if (pos < 0 || pos > buf.len) {
        result = Py_NewRef(Py_None);
        goto done;
    }
    Py_ssize_t e = chunked_end(buf.buf, buf.len, pos);
    result = e < 0 ? Py_NewRef(Py_None) : PyLong_FromSsize_t(e);
done:
    PyBuffer_Release(&buf);
    return result;
}

static PyMethodDef methods[] = {
    {"request_head", (PyCFunction)(void (*)(void))request_head, METH_FASTCALL,
     "The whole CRLF request head at data[start:] made into cls, or None where the Python parser decides."},
    {"response_head", (PyCFunction)(void (*)(void))response_head, METH_FASTCALL,
     "The whole CRLF response head at data[start:] made into cls, or None where the Python parser decides."},
    {"chunked_body_end", (PyCFunction)(void (*)(void))chunked_body_end, METH_FASTCALL,
     "Offset just past a chunked body starting at pos, or None."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_http1_heads",
                                    "HTTP/1.x whole-head parser in C (edge/protocols/http1.py is the reference).", -1,
                                    methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__http1_heads(void)
{
    for (int i = 0; i < 9; i++) {
        if (s_methods[i] == NULL && (s_methods[i] = PyUnicode_InternFromString(METHOD_NAMES[i])) == NULL) return NULL;
    }
    for (int i = 0; i < N_KNOWN; i++) {
        if (s_known[i] == NULL && (s_known[i] = PyUnicode_InternFromString(KNOWN_NAMES[i])) == NULL) return NULL;
        s_known_len[i] = (Py_ssize_t)strlen(KNOWN_NAMES[i]);
    }
    if (s_v10 == NULL && (s_v10 = PyUnicode_InternFromString("1.0")) == NULL) return NULL;
    if (s_v11 == NULL && (s_v11 = PyUnicode_InternFromString("1.1")) == NULL) return NULL;
    if (s_empty == NULL && (s_empty = PyUnicode_InternFromString("")) == NULL) return NULL;
    if (s_star == NULL && (s_star = PyUnicode_InternFromString("*")) == NULL) return NULL;
    return PyModule_Create(&module);
}
