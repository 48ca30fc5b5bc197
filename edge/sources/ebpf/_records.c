/* Ring-buffer records decoded in C: the common case of edge/sources/ebpf/decode.py's decode_event for the records
 * every traced message brings (struct data_event, struct data_more_event and struct close_event of bpf/io.h), giving
 * the very events the Python code gives. Anything else (another record type, a short record, an enum value out of
 * range, endpoints or a process name decode.py has not seen yet) returns None and the Python code decides, counts the
 * drop and fills its caches; the C code only reads those caches, so it never needs inet_ntop or the drop counters.
 * tests/edge/sources/ebpf/test_records_c.py compares the two on random, mutated and truncated records.
 *
 * Every byte comes from the kernel's ring buffer, filled from other processes' traffic: each read is bounds-checked
 * against the record's length, nothing loops or recurses. Plain C99 and the stable parts of the CPython API; the
 * host's byte order, as decode.py's '=' structs (the devices are aarch64).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* bpf/helix.h enum helix_event_type */
#define EV_DATA 1
#define EV_CLOSE 2
#define EV_DATA_MORE 8
/* bpf/io.h sizes (their _Static_asserts): decode.py RECORD_SIZES */
#define DATA_SIZE 144
#define DATA_MORE_SIZE 48
#define CLOSE_SIZE 56
/* struct data_event: the helix_endpoints' addresses, ports and family (decode.py _EP_AT, _EP_END), comm */
#define EP_AT 80
#define EP_END 118
#define COMM_AT 120
#define COMM_LEN 16
#define F_TLS 1u
#define RV_KERNEL (UINT64_C(1) << 63)
#define RV_MASK ((UINT64_C(1) << 56) - 1)

static uint16_t u16_at(const unsigned char *p, Py_ssize_t at)
{
    uint16_t v;
    memcpy(&v, p + at, sizeof v);
    return v;
}

static uint32_t u32_at(const unsigned char *p, Py_ssize_t at)
{
    uint32_t v;
    memcpy(&v, p + at, sizeof v);
    return v;
}

static int32_t i32_at(const unsigned char *p, Py_ssize_t at)
{
    int32_t v;
    memcpy(&v, p + at, sizeof v);
    return v;
}

static unsigned long long u64_at(const unsigned char *p, Py_ssize_t at)
{
    uint64_t v;
    memcpy(&v, p + at, sizeof v);
    return (unsigned long long)v;
}

/* A cached value of decode.py's caches (dict keyed by bytes) for raw[at:at+n], borrowed; NULL with no error: a miss. */
static PyObject *cached(PyObject *cache, const unsigned char *p, Py_ssize_t at, Py_ssize_t n)
{
    PyObject *key = PyBytes_FromStringAndSize((const char *)p + at, n);
    if (key == NULL) return NULL;
    PyObject *v = PyDict_GetItemWithError(cache, key);
    Py_DECREF(key);
    return v;
}

/* Calls cls with n new references in args (NULL where making one failed), releasing them. */
static PyObject *make(PyObject *cls, PyObject **args, size_t n)
{
    PyObject *result = NULL;
    size_t i;
    for (i = 0; i < n; i++) {
        if (args[i] == NULL) break;
    }
    if (i == n) result = PyObject_Vectorcall(cls, args, n, NULL);
    for (i = 0; i < n; i++) Py_XDECREF(args[i]);
    return result;
}

static PyObject *enum_at(PyObject *members, unsigned v)
{
    if ((Py_ssize_t)v >= PyTuple_GET_SIZE(members)) return NULL;
    return PyTuple_GET_ITEM(members, (Py_ssize_t)v);
}

/* struct data_event -> DataEvent (decode.py _decode, kind EV_DATA). */
static PyObject *data(const unsigned char *p, Py_ssize_t len, PyObject *cls, PyObject *roles, PyObject *directions,
                      PyObject *pairs, PyObject *comms)
{
    if (len < DATA_SIZE) Py_RETURN_NONE;
    uint32_t plen = u32_at(p, 136);
    if ((uint64_t)plen > (uint64_t)(len - DATA_SIZE)) Py_RETURN_NONE;
    PyObject *role = enum_at(roles, p[118]);
    PyObject *direction = enum_at(directions, p[119]);
    if (role == NULL || direction == NULL) Py_RETURN_NONE;
    PyObject *pair = cached(pairs, p, EP_AT, EP_END - EP_AT);
    if (pair == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) Py_RETURN_NONE;
    PyObject *comm = cached(comms, p, COMM_AT, COMM_LEN);
    if (comm == NULL) return PyErr_Occurred() ? NULL : Py_NewRef(Py_None);
    unsigned long long rv = u64_at(p, 72);
    uint16_t flags = u16_at(p, 140);
    PyObject *args[19] = {
        PyLong_FromUnsignedLongLong(u64_at(p, 16)),          /* ts_ns */
        PyLong_FromUnsignedLongLong(u64_at(p, 24)),          /* end_ns */
        PyLong_FromUnsignedLong(u32_at(p, 4)),               /* pid */
        PyLong_FromUnsignedLong(u32_at(p, 8)),               /* tid */
        Py_NewRef(comm),
        PyLong_FromLong(i32_at(p, 12)),                      /* fd */
        PyLong_FromUnsignedLongLong(u64_at(p, 32)),          /* sock */
        Py_NewRef(role),
        Py_NewRef(direction),
        Py_NewRef(PyTuple_GET_ITEM(pair, 0)),                /* local */
        Py_NewRef(PyTuple_GET_ITEM(pair, 1)),                /* remote */
        PyLong_FromUnsignedLongLong(u64_at(p, 40)),          /* size */
        PyBytes_FromStringAndSize((const char *)p + DATA_SIZE, (Py_ssize_t)plen),
        PyLong_FromUnsignedLongLong(u64_at(p, 48)),          /* prev_bytes */
        PyLong_FromUnsignedLongLong(u64_at(p, 56)),          /* prev_end_ns */
        PyLong_FromUnsignedLongLong(u64_at(p, 64)),          /* offcpu_ns */
        rv & RV_KERNEL ? PyLong_FromUnsignedLongLong(rv & RV_MASK) : Py_NewRef(Py_None),
        PyBool_FromLong(flags & F_TLS),
        PyLong_FromUnsignedLong(u16_at(p, 142)),             /* tls_version */
    };
    return make(cls, args, 19);
}

/* struct data_more_event -> DataMoreEvent. */
static PyObject *data_more(const unsigned char *p, Py_ssize_t len, PyObject *cls, PyObject *directions)
{
    if (len < DATA_MORE_SIZE) Py_RETURN_NONE;
    uint16_t plen = u16_at(p, 12);
    if ((Py_ssize_t)plen > len - DATA_MORE_SIZE) Py_RETURN_NONE;
    PyObject *direction = enum_at(directions, p[14]);
    if (direction == NULL) Py_RETURN_NONE;
    PyObject *args[9] = {
        PyLong_FromUnsignedLongLong(u64_at(p, 16)),          /* ts_ns */
        PyLong_FromUnsignedLongLong(u64_at(p, 24)),          /* end_ns */
        PyLong_FromUnsignedLongLong(u64_at(p, 32)),          /* sock */
        PyLong_FromUnsignedLong(u32_at(p, 4)),               /* pid */
        PyLong_FromUnsignedLong(u32_at(p, 8)),               /* tid */
        Py_NewRef(direction),
        PyLong_FromUnsignedLongLong(u64_at(p, 40)),          /* offset */
        PyBytes_FromStringAndSize((const char *)p + DATA_MORE_SIZE, (Py_ssize_t)plen),
        PyBool_FromLong(p[15] & F_TLS),
    };
    return make(cls, args, 9);
}

/* struct close_event -> CloseEvent. */
static PyObject *close_(const unsigned char *p, Py_ssize_t len, PyObject *cls)
{
    if (len < CLOSE_SIZE) Py_RETURN_NONE;
    PyObject *args[8] = {
        PyLong_FromUnsignedLongLong(u64_at(p, 16)),          /* ts_ns */
        PyLong_FromUnsignedLong(u32_at(p, 4)),               /* pid */
        PyLong_FromUnsignedLong(u32_at(p, 8)),               /* tid */
        PyLong_FromLong(i32_at(p, 12)),                      /* fd */
        PyLong_FromUnsignedLongLong(u64_at(p, 24)),          /* sock */
        PyLong_FromUnsignedLongLong(u64_at(p, 32)),          /* last_bytes */
        PyLong_FromUnsignedLongLong(u64_at(p, 40)),          /* last_end_ns */
        PyLong_FromUnsignedLongLong(u64_at(p, 48)),          /* offcpu_ns */
    };
    return make(cls, args, 8);
}

/* record(raw, classes, roles, directions, endpoint_pairs, comms): the event of one record, or None where the Python
 * decoder decides. classes: (DataEvent, DataMoreEvent, CloseEvent); roles, directions: the enums' members by value. */
static PyObject *record(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 6 || !PyTuple_Check(args[1]) || PyTuple_GET_SIZE(args[1]) != 3 || !PyTuple_Check(args[2])
        || !PyTuple_Check(args[3]) || !PyDict_Check(args[4]) || !PyDict_Check(args[5])) {
        PyErr_SetString(PyExc_TypeError, "record(raw, (data, data_more, close classes), roles tuple, directions "
                                         "tuple, endpoint pairs dict, comms dict)");
        return NULL;
    }
    /* Only bytes: decode.py keeps the payload as a slice of what it got, which for bytes is bytes. */
    if (!PyBytes_CheckExact(args[0])) Py_RETURN_NONE;
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t len = PyBytes_GET_SIZE(args[0]);
    if (len < 4) Py_RETURN_NONE;
    switch (u32_at(p, 0)) {
    case EV_DATA:
        return data(p, len, PyTuple_GET_ITEM(args[1], 0), args[2], args[3], args[4], args[5]);
    case EV_DATA_MORE:
        return data_more(p, len, PyTuple_GET_ITEM(args[1], 1), args[3]);
    case EV_CLOSE:
        return close_(p, len, PyTuple_GET_ITEM(args[1], 2));
    default:
        Py_RETURN_NONE;
    }
}

static PyMethodDef methods[] = {
    {"record", (PyCFunction)(void (*)(void))record, METH_FASTCALL,
     "The event of one data, data_more or close record, or None where the Python decoder decides."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_records",
                                    "Ring-buffer record decoding in C (edge/sources/ebpf/decode.py is the reference).",
                                    -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__records(void)
{
    return PyModule_Create(&module);
}
