/* tmtrack: a minimal C extension for scripts/check-install.sh.

   Built against an installed tmfork with python3.13-config, it exposes
   PyTraceMalloc_Track() and PyTraceMalloc_Untrack(), and supports isolated
   subinterpreters (multi-phase init, a GIL per interpreter), so that
   check.py can see which interpreter each tracked block goes to. */

#include <Python.h>

static PyObject *
track(PyObject *module, PyObject *args)
{
    unsigned int domain;
    unsigned long long ptr;
    Py_ssize_t size;
    if (!PyArg_ParseTuple(args, "IKn:track", &domain, &ptr, &size)) {
        return NULL;
    }
    return PyLong_FromLong(
        PyTraceMalloc_Track(domain, (uintptr_t)ptr, (size_t)size));
}

static PyObject *
untrack(PyObject *module, PyObject *args)
{
    unsigned int domain;
    unsigned long long ptr;
    if (!PyArg_ParseTuple(args, "IK:untrack", &domain, &ptr)) {
        return NULL;
    }
    return PyLong_FromLong(PyTraceMalloc_Untrack(domain, (uintptr_t)ptr));
}

static PyMethodDef methods[] = {
    {"track", track, METH_VARARGS,
     "track(domain, address, size): PyTraceMalloc_Track(); 0 on success"},
    {"untrack", untrack, METH_VARARGS,
     "untrack(domain, address): PyTraceMalloc_Untrack(); 0 on success"},
    {NULL, NULL, 0, NULL}
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
    {0, NULL}
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "tmtrack",
    .m_doc = "PyTraceMalloc_Track() and PyTraceMalloc_Untrack() from Python",
    .m_size = 0,
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC
PyInit_tmtrack(void)
{
    return PyModuleDef_Init(&module);
}
