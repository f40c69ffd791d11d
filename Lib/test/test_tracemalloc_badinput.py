"""Tests for tracemalloc with bad input.

Bad arguments, bad files and odd filters must give the same errors or
results as upstream CPython 3.13, and never crash: in the main interpreter
and in an isolated subinterpreter, where each interpreter traces on its own.

Every test of BadInputTests runs its code through run_code(), in the main
interpreter (TestMainInterpreter) or in an isolated subinterpreter
(TestIsolatedSubinterpreter).  Upstream cannot import tracemalloc in an
isolated subinterpreter: the subinterpreter tests are skipped when
`import tracemalloc` raises ImportError there.

This module also runs as a script, so it can be run on an upstream build:
    python Lib/test/test_tracemalloc_badinput.py -v
"""

import ast
import inspect
import os
import pickle
import tempfile
import textwrap
import tracemalloc
import unittest
from test import support
from test.support import script_helper

try:
    import _interpreters
except ImportError:
    _interpreters = None


RANGE_ERROR = ('ValueError',
               'the number of frames must be in range [1; 65535]')
NOT_AN_INT = "'{}' object cannot be interpreted as an integer"
C_INT_OVERFLOW = ('OverflowError', 'Python int too large to convert to C int')
NOT_TRACING_SNAPSHOT = (
    'RuntimeError',
    'the tracemalloc module must be tracing memory allocations '
    'to take a snapshot')

# File names of the blocks that the filter tests allocate, by label.
LONG = 4096
NAMES = {
    'empty': '',
    'a': 'a',
    'bracket': '[',
    'class': '<bad[1]>',
    'bad1': '<bad1>',
    'nonascii': '<\xe9\u20ac>',
    'surrogate': '<\udcff>',
    'long': 'L' * LONG,
}
ALL_LABELS = sorted(NAMES)


# --- Helpers run in the interpreter under test -------------------------------
#
# Their source is sent to each subinterpreter, so both sides use the same
# code.  They return literals: run_in() passes results back as a repr().

def outcome(func, *args, **kwargs):
    """Call func(*args, **kwargs); return ('ok', its result), or the type
    name and the message of the exception it raised."""
    try:
        result = func(*args, **kwargs)
    except Exception as exc:
        return (type(exc).__name__, str(exc))
    return ('ok', result)


def state():
    """(is tracing, traceback limit) of the calling interpreter."""
    return (tracemalloc.is_tracing(), tracemalloc.get_traceback_limit())


def alloc_from(filename, size):
    """Return a new bytes object of size bytes, allocated by code whose file
    name is filename."""
    namespace = {'size': size}
    exec(compile("data = b'x' * size", filename, 'exec'), namespace)
    return namespace['data']


def named_snapshot():
    """Trace a block from each file name of NAMES; return a snapshot of the
    calling interpreter, with tracing stopped again."""
    tracemalloc.start()
    try:
        blocks = [alloc_from(name, 1000) for name in NAMES.values()]
        snapshot = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    del blocks
    return snapshot


def labels_kept(snapshot, filters):
    """Labels of NAMES whose blocks are still in the snapshot once filtered
    with filters; the number of traces left is in labels_kept.ntraces."""
    filtered = snapshot.filter_traces(filters)
    names = {trace.traceback[0].filename for trace in filtered.traces}
    labels_kept.ntraces = len(filtered.traces)
    return sorted(label for label, name in NAMES.items() if name in names)


def summary(snapshot, filename):
    """(traceback limit, number of traces, size traced from filename) of
    a snapshot."""
    size = sum(trace.size for trace in snapshot.traces
               if any(frame.filename == filename for frame in trace.traceback))
    return (snapshot.traceback_limit, len(snapshot.traces), size)


def run_in(interp, source, **shared):
    """Run source in interp, in its __main__ module, and return the value
    (a literal) it assigns to `result`; raise RuntimeError if it fails.
    The keyword arguments are bound in __main__ first."""
    import _interpreters
    if shared:
        _interpreters.set___main___attrs(interp, shared)
    rfd, wfd = os.pipe()
    script = '\n'.join([
        'result = None',
        textwrap.dedent(source),
        'import os as _os',
        f'_os.set_blocking({wfd}, False)',
        '_data = repr(result).encode()',
        f'assert _os.write({wfd}, _data) == len(_data), "result too long"',
    ])
    try:
        excinfo = _interpreters.exec(interp, script)
    finally:
        os.close(wfd)
    with open(rfd, 'rb') as rfile:
        data = rfile.read()
    if excinfo is not None:
        raise RuntimeError(f'failed in interpreter {interp}:\n'
                           f'{excinfo.errdisplay}')
    return ast.literal_eval(data.decode())


HELPERS = (outcome, state, alloc_from, named_snapshot, labels_kept, summary)

PRELUDE = '\n'.join([
    'import os, pickle, sys, tracemalloc, _tracemalloc',
    *(f'{name} = {globals()[name]!r}' for name in ('LONG', 'NAMES')),
    *(inspect.getsource(func) for func in HELPERS),
])


def isolated_import_error():
    """The message of the ImportError that `import tracemalloc` raises in
    a new isolated subinterpreter, or None if it imports."""
    interp = _interpreters.create('isolated')
    try:
        excinfo = _interpreters.exec(interp, 'import tracemalloc')
    finally:
        _interpreters.destroy(interp)
    if excinfo is None:
        return None
    if excinfo.type.__name__ == 'ImportError':
        return excinfo.msg
    raise RuntimeError('import tracemalloc failed in an isolated '
                       f'subinterpreter:\n{excinfo.errdisplay}')


def restore_limit(limit):
    """Set the traceback limit of the main interpreter back to limit (the
    limit is kept after stop())."""
    if not tracemalloc.is_tracing() and \
            tracemalloc.get_traceback_limit() != limit:
        tracemalloc.start(limit)
        tracemalloc.stop()


# --- The tests ---------------------------------------------------------------

class BadInputTests:
    """Tests run in one interpreter; the concrete classes say which one.
    It does not trace when a test starts."""

    def run_code(self, source, **shared):
        """Run source in the interpreter under test and return the value
        (a literal) it assigns to `result`.  The names it binds stay for
        the next call of the same test."""
        raise NotImplementedError

    def write_file(self, data):
        """Write data to a new file; return its name."""
        tmpdir = self.enterContext(tempfile.TemporaryDirectory())
        filename = os.path.join(tmpdir, 'snapshot')
        with open(filename, 'wb') as fp:
            fp.write(data)
        return filename

    # start() with a bad number of frames

    def check_start_fails(self, nframe, expected, func='tracemalloc.start'):
        before, error, after = self.run_code(f"""
            before = state()
            error = outcome({func}, {nframe!r})
            result = (before, error, state())
            """)
        self.assertEqual(error, expected)
        self.assertFalse(after[0], "tracing after a failed start()")
        self.assertEqual(after, before)

    def test_start_negative_nframe(self):
        self.check_start_fails(-1, RANGE_ERROR)

    def test_start_zero_nframe(self):
        self.check_start_fails(0, RANGE_ERROR)

    def test_start_nframe_too_big(self):
        self.check_start_fails(65536, RANGE_ERROR)

    def test_start_str_nframe(self):
        self.check_start_fails('x', ('TypeError', NOT_AN_INT.format('str')))

    def test_start_float_nframe(self):
        self.check_start_fails(1.5,
                               ('TypeError', NOT_AN_INT.format('float')))

    def test_start_nframe_overflows_c_int(self):
        for nframe in (2**31, 2**70, -2**70):
            with self.subTest(nframe=nframe):
                self.check_start_fails(nframe, C_INT_OVERFLOW,
                                       func='_tracemalloc.start')

    def test_start_nframe_c_int_min(self):
        self.check_start_fails(-2**31, RANGE_ERROR, func='_tracemalloc.start')

    def test_start_keyword_nframe(self):
        error, tracing = self.run_code("""
            result = (outcome(tracemalloc.start, nframe=2),
                      tracemalloc.is_tracing())
            """)
        self.assertEqual(error, (
            'TypeError', '_tracemalloc.start() takes no keyword arguments'))
        self.assertFalse(tracing)

    def test_start_too_many_arguments(self):
        error, tracing = self.run_code("""
            result = (outcome(tracemalloc.start, 1, 2),
                      tracemalloc.is_tracing())
            """)
        self.assertEqual(error, (
            'TypeError', 'start expected at most 1 argument, got 2'))
        self.assertFalse(tracing)

    def test_start_max_nframe(self):
        result = self.run_code("""
            result = (outcome(tracemalloc.start, 65535), state())
            tracemalloc.stop()
            """)
        self.assertEqual(result, (('ok', None), (True, 65535)))

    def test_failed_start_while_tracing_keeps_session(self):
        # Upstream checks the number of frames before anything else: the
        # session goes on, with its limit.
        results = self.run_code("""
            tracemalloc.start(5)
            result = []
            for nframe in (-1, 0, 65536, 'x', 1.5, 2**31):
                error = outcome(_tracemalloc.start, nframe)
                obj = object()
                traced = tracemalloc.get_object_traceback(obj) is not None
                result.append((error, state(), traced))
            tracemalloc.stop()
            """)
        self.assertEqual([error for error, *_ in results], [
            RANGE_ERROR, RANGE_ERROR, RANGE_ERROR,
            ('TypeError', NOT_AN_INT.format('str')),
            ('TypeError', NOT_AN_INT.format('float')),
            C_INT_OVERFLOW,
        ])
        # Still tracing, with the same limit, and new objects are traced
        self.assertEqual([tuple(rest) for error, *rest in results],
                         [((True, 5), True)] * 6)

    def test_start_while_tracing_keeps_limit(self):
        # Upstream ignores start() when already tracing, limit included.
        result = self.run_code("""
            tracemalloc.start(5)
            tracemalloc.start(10)
            result = state()
            tracemalloc.stop()
            """)
        self.assertEqual(result, (True, 5))

    # Functions called while not tracing

    def test_take_snapshot_when_not_tracing(self):
        result = self.run_code("result = outcome(tracemalloc.take_snapshot)")
        self.assertEqual(result, NOT_TRACING_SNAPSHOT)

    def test_get_traced_memory_when_not_tracing(self):
        result = self.run_code("result = tracemalloc.get_traced_memory()")
        self.assertEqual(result, (0, 0))

    def test_get_traces_when_not_tracing(self):
        result = self.run_code("result = _tracemalloc._get_traces()")
        self.assertEqual(result, [])

    def check_noop_when_not_tracing(self, func):
        result = self.run_code(f"""
            result = (outcome({func}), outcome({func}),
                      tracemalloc.is_tracing(),
                      tracemalloc.get_traced_memory())
            """)
        self.assertEqual(result, (('ok', None), ('ok', None), False, (0, 0)))

    def test_clear_traces_when_not_tracing(self):
        self.check_noop_when_not_tracing('tracemalloc.clear_traces')

    def test_reset_peak_when_not_tracing(self):
        self.check_noop_when_not_tracing('tracemalloc.reset_peak')

    def test_stop_when_not_tracing(self):
        self.check_noop_when_not_tracing('tracemalloc.stop')

    def test_get_tracemalloc_memory_when_not_tracing(self):
        before, tracing, after = self.run_code("""
            before = tracemalloc.get_tracemalloc_memory()
            tracemalloc.start()
            tracing = tracemalloc.get_tracemalloc_memory()
            tracemalloc.stop()
            result = (before, tracing, tracemalloc.get_tracemalloc_memory())
            """)
        self.assertEqual(before, 0)
        self.assertGreater(tracing, 0)
        self.assertEqual(after, 0)

    # get_object_traceback()

    def test_object_traceback_without_argument(self):
        result = self.run_code("""
            result = outcome(tracemalloc.get_object_traceback)
            """)
        self.assertEqual(result, (
            'TypeError', "get_object_traceback() missing 1 required "
                         "positional argument: 'obj'"))

    def test_c_object_traceback_bad_arguments(self):
        result = self.run_code("""
            func = _tracemalloc._get_object_traceback
            result = (outcome(func), outcome(func, 1, 2), outcome(func, obj=1))
            """)
        self.assertEqual(result, (
            ('TypeError', '_tracemalloc._get_object_traceback() takes '
                          'exactly one argument (0 given)'),
            ('TypeError', '_tracemalloc._get_object_traceback() takes '
                          'exactly one argument (2 given)'),
            ('TypeError', '_tracemalloc._get_object_traceback() takes '
                          'no keyword arguments'),
        ))

    def test_object_traceback_of_object_created_before_start(self):
        result = self.run_code("""
            obj = object()
            tracemalloc.start()
            result = (tracemalloc.get_object_traceback(obj),
                      _tracemalloc._get_object_traceback(obj))
            tracemalloc.stop()
            """)
        self.assertEqual(result, (None, None))

    def test_object_traceback_after_stop(self):
        result = self.run_code("""
            tracemalloc.start()
            obj = object()
            traced = tracemalloc.get_object_traceback(obj) is not None
            tracemalloc.stop()
            result = (traced, tracemalloc.get_object_traceback(obj))
            """)
        self.assertEqual(result, (True, None))

    def test_object_traceback_of_immortal_objects(self):
        result = self.run_code("""
            tracemalloc.start()
            objects = (None, True, False, Ellipsis, NotImplemented, 0, 5, -5,
                       256, (), '', b'', 'a', int, object, sys)
            result = [(repr(obj), tracemalloc.get_object_traceback(obj))
                      for obj in objects]
            result.append(('object()', tracemalloc.get_object_traceback(
                object()) is not None))
            tracemalloc.stop()
            """)
        self.assertEqual(result[-1], ('object()', True),
                         "a new object has no traceback")
        self.assertEqual([tb for obj, tb in result[:-1]],
                         [None] * (len(result) - 1), result)

    def test_object_traceback_of_big_int_made_at_runtime(self):
        result = self.run_code("""
            tracemalloc.start()
            big = int('1' * 30)
            result = (tracemalloc.get_object_traceback(big) is not None,
                      tracemalloc.get_object_traceback(int('5')))
            tracemalloc.stop()
            """)
        self.assertEqual(result, (True, None))

    # Snapshot.load() of bad files

    def check_load(self, data):
        """Load a snapshot from a file holding data; return the outcome."""
        filename = self.write_file(data)
        return self.run_code("""
            loaded = outcome(tracemalloc.Snapshot.load, filename)
            if loaded[0] == 'ok':
                loaded = ('ok', type(loaded[1]).__name__, loaded[1])
            result = loaded
            """, filename=filename)

    def dumped_snapshot(self):
        """The bytes of a snapshot of the interpreter under test."""
        filename = self.write_file(b'')
        self.run_code("""
            tracemalloc.start()
            block = alloc_from('<dumped>', 1000)
            tracemalloc.take_snapshot().dump(filename)
            tracemalloc.stop()
            """, filename=filename)
        with open(filename, 'rb') as fp:
            return fp.read()

    def test_load_truncated_snapshot(self):
        data = self.dumped_snapshot()
        for size in (1, len(data) // 2, len(data) - 1):
            with self.subTest(size=size):
                self.assertEqual(self.check_load(data[:size]), (
                    'UnpicklingError', 'pickle data was truncated'))

    def test_load_empty_file(self):
        self.assertEqual(self.check_load(b''),
                         ('EOFError', 'Ran out of input'))

    def test_load_non_pickle_file(self):
        result = self.check_load(b'hello world\n')
        self.assertEqual(result[0], 'UnpicklingError')

    def test_load_foreign_pickle(self):
        # Upstream returns whatever was pickled, without checking its type.
        for obj in ({'a': 1}, [1, 2], None):
            with self.subTest(obj=obj):
                self.assertEqual(self.check_load(pickle.dumps(obj)),
                                 ('ok', type(obj).__name__, obj))

    def test_load_pickle_of_missing_class(self):
        error, message = self.check_load(b'ctracemalloc\nNoSuchClass\n.')
        self.assertEqual(error, 'AttributeError')
        self.assertTrue(message.startswith(
            "Can't get attribute 'NoSuchClass' on <module 'tracemalloc'"),
            message)

    def test_load_pickle_of_missing_module(self):
        result = self.check_load(b'cno_such_module_for_tracemalloc\nX\n.')
        self.assertEqual(result, (
            'ModuleNotFoundError',
            "No module named 'no_such_module_for_tracemalloc'"))

    def test_load_missing_file(self):
        filename = self.write_file(b'') + '.missing'
        error, message = self.run_code("""
            result = outcome(tracemalloc.Snapshot.load, filename)
            """, filename=filename)
        self.assertEqual(error, 'FileNotFoundError')
        self.assertIn(filename, message)

    def test_dump_load_round_trip(self):
        filename = self.write_file(b'')
        dumped, reloaded = self.run_code("""
            tracemalloc.start(3)
            block = alloc_from('<dumped>', 1000)
            snapshot = tracemalloc.take_snapshot()
            tracemalloc.stop()
            snapshot.dump(filename)
            result = (summary(snapshot, '<dumped>'),
                      summary(tracemalloc.Snapshot.load(filename), '<dumped>'))
            """, filename=filename)
        limit, ntraces, size = dumped
        self.assertEqual(limit, 3)
        self.assertGreater(ntraces, 0)
        self.assertGreaterEqual(size, 1000)
        self.assertEqual(reloaded, dumped)
        # Loaded in the main interpreter too
        loaded = tracemalloc.Snapshot.load(filename)
        self.assertEqual(summary(loaded, '<dumped>'), dumped)

    # Filters with odd patterns and values

    def check_filters(self, cases):
        """cases: (filters expression, expected labels) pairs; the
        expressions are evaluated in the interpreter under test.  Return
        the number of traces left by each case."""
        results = self.run_code("""
            snapshot = named_snapshot()
            result = []
            for expr in exprs:
                kept = labels_kept(snapshot, eval(expr))
                result.append((kept, labels_kept.ntraces))
            """, exprs=tuple(expr for expr, labels in cases))
        for (expr, labels), (kept, ntraces) in zip(cases, results):
            with self.subTest(filters=expr[:60]):
                self.assertEqual(kept, labels)
        return [ntraces for kept, ntraces in results]

    def test_filter_empty_pattern(self):
        self.check_filters([("[tracemalloc.Filter(True, '')]", ['empty'])])

    def test_filter_star_pattern(self):
        self.check_filters([("[tracemalloc.Filter(True, '*')]", ALL_LABELS)])

    def test_exclude_double_star_pattern(self):
        ntraces = self.check_filters([
            ("[tracemalloc.Filter(False, '**')]", [])])
        self.assertEqual(ntraces, [0])

    def test_filter_bracket_patterns(self):
        self.check_filters([
            ("[tracemalloc.Filter(True, '[')]", ['bracket']),
            ("[tracemalloc.Filter(True, '*[*')]", ['bracket', 'class']),
            ("[tracemalloc.Filter(True, '<bad[1]>')]", ['bad1']),
            ("[tracemalloc.Filter(True, '<bad[[]1]>')]", ['class']),
            ("[tracemalloc.Filter(True, '<bad[!1]1]>')]", ['class']),
            ("[tracemalloc.Filter(True, '<bad[!1]>')]", []),
        ])

    def test_filter_question_mark_patterns(self):
        self.check_filters([
            ("[tracemalloc.Filter(True, '?')]", ['a', 'bracket']),
            ("[tracemalloc.Filter(True, '<bad?1?>')]", ['class']),
        ])

    def test_filter_long_patterns(self):
        self.check_filters([
            ("[tracemalloc.Filter(True, 'L' * LONG)]", ['long']),
            ("[tracemalloc.Filter(True, 'L' * (LONG + 1))]", []),
            ("[tracemalloc.Filter(True, 'L' * (4 * LONG))]", []),
            ("[tracemalloc.Filter(True, 'L*' * 100)]", ['long']),
            ("[tracemalloc.Filter(True, '*L' * (LONG + 1))]", []),
        ])

    def test_filter_non_ascii_patterns(self):
        self.check_filters([
            ("[tracemalloc.Filter(True, NAMES['nonascii'])]", ['nonascii']),
            ("[tracemalloc.Filter(True, '<\\xe9*')]", ['nonascii']),
            ("[tracemalloc.Filter(True, NAMES['surrogate'])]", ['surrogate']),
        ])

    def test_filter_negative_lineno(self):
        self.check_filters([
            ("[tracemalloc.Filter(True, 'a', lineno=-1)]", []),
            ("[tracemalloc.Filter(False, 'a', lineno=-1)]", ALL_LABELS),
            ("[tracemalloc.Filter(True, 'a', lineno=1)]", ['a']),
        ])

    def test_filter_zero_lineno(self):
        self.check_filters([
            ("[tracemalloc.Filter(True, 'a', lineno=0)]", []),
            ("[tracemalloc.Filter(False, 'a', lineno=0)]", ALL_LABELS),
        ])

    def test_domain_filter_negative_domain(self):
        ntraces = self.check_filters([
            ("[tracemalloc.DomainFilter(True, -1)]", []),
            ("[tracemalloc.DomainFilter(False, -1)]", ALL_LABELS),
            ("[tracemalloc.Filter(True, '*', domain=-1)]", []),
        ])
        self.assertEqual(ntraces[0], 0)

    def test_domain_filter_huge_domain(self):
        ntraces = self.check_filters([
            ("[tracemalloc.DomainFilter(True, 2**40)]", []),
            ("[tracemalloc.DomainFilter(False, 2**40)]", ALL_LABELS),
        ])
        self.assertEqual(ntraces[0], 0)

    def test_filter_traces_with_empty_list(self):
        result = self.run_code("""
            snapshot = named_snapshot()
            filtered = snapshot.filter_traces([])
            result = (filtered is snapshot,
                      filtered.traces._traces == snapshot.traces._traces,
                      filtered.traceback_limit, labels_kept(snapshot, []))
            """)
        self.assertEqual(result, (False, True, 1, ALL_LABELS))

    def test_filter_traces_with_non_filter(self):
        result = self.run_code("""
            snapshot = named_snapshot()
            result = (outcome(snapshot.filter_traces, [object()]),
                      outcome(snapshot.filter_traces, ['*']))
            """)
        self.assertEqual(result, (
            ('AttributeError', "'object' object has no attribute 'inclusive'"),
            ('AttributeError', "'str' object has no attribute 'inclusive'"),
        ))

    def test_filter_traces_with_non_list(self):
        result = self.run_code("""
            snapshot = named_snapshot()
            result = (outcome(snapshot.filter_traces,
                              tracemalloc.Filter(True, '*')),
                      outcome(snapshot.filter_traces, None))
            """)
        self.assertEqual(result, (
            ('TypeError', 'filters must be a list of filters, not Filter'),
            ('TypeError', 'filters must be a list of filters, not NoneType'),
        ))


class TestMainInterpreter(BadInputTests, unittest.TestCase):

    def setUp(self):
        if tracemalloc.is_tracing():
            self.skipTest("tracemalloc must be stopped before the test")
        self.addCleanup(restore_limit, tracemalloc.get_traceback_limit())
        self.addCleanup(tracemalloc.stop)
        self.namespace = {'__name__': '__badinput__'}
        exec(PRELUDE, self.namespace)

    def run_code(self, source, **shared):
        self.namespace.update(shared)
        self.namespace['result'] = None
        exec(textwrap.dedent(source), self.namespace)
        # Literals, as from a subinterpreter
        return ast.literal_eval(repr(self.namespace['result']))


@unittest.skipIf(_interpreters is None, "requires the _interpreters module")
class TestIsolatedSubinterpreter(BadInputTests, unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        error = isolated_import_error()
        if error is not None:
            raise unittest.SkipTest(
                "tracemalloc cannot be imported in an isolated "
                f"subinterpreter: {error}")

    def setUp(self):
        if tracemalloc.is_tracing():
            self.skipTest("tracemalloc must be stopped before the test")
        main_state = state()
        self.addCleanup(self.check_main_state, main_state)
        self.interp = _interpreters.create('isolated')
        self.addCleanup(_interpreters.destroy, self.interp)
        run_in(self.interp, PRELUDE)

    def check_main_state(self, main_state):
        self.assertEqual(state(), main_state,
                         "the subinterpreter changed the main interpreter")

    def run_code(self, source, **shared):
        return run_in(self.interp, source, **shared)


# --- Command line ------------------------------------------------------------

class TestCommandLine(unittest.TestCase):
    """-X tracemalloc=NFRAME and PYTHONTRACEMALLOC=NFRAME: exit status and
    the first lines of the error, as upstream."""

    INVALID_XOPTION = [
        b'Fatal Python error: config_init_tracemalloc: '
        b'-X tracemalloc=NFRAME: invalid number of frames',
        b'Python runtime state: preinitialized',
    ]
    INVALID_ENV_VAR = [
        b'Fatal Python error: config_init_tracemalloc: '
        b'PYTHONTRACEMALLOC: invalid number of frames',
        b'Python runtime state: preinitialized',
    ]
    OUT_OF_RANGE = [
        b"Fatal Python error: init_interp_main: can't start tracemalloc",
        b'Python runtime state: core initialized',
        b'ValueError: the number of frames must be in range [1; 65535]',
    ]
    CODE = ('import tracemalloc; print(tracemalloc.is_tracing(), '
            'tracemalloc.get_traceback_limit())')

    def check_fails(self, expected_lines, *args, **env_vars):
        with support.SuppressCrashReport():
            rc, stdout, stderr = script_helper.assert_python_failure(
                *args, '-c', self.CODE, **env_vars)
        self.assertEqual(rc, 1)
        self.assertEqual(stdout, b'')
        lines = stderr.splitlines()
        self.assertEqual(lines[:len(expected_lines)], expected_lines, stderr)

    def check_not_tracing(self, *args, **env_vars):
        rc, stdout, stderr = script_helper.assert_python_ok(
            *args, '-c', self.CODE, **env_vars)
        self.assertEqual(stdout.strip(), b'False 1')
        self.assertEqual(stderr, b'')

    @support.force_not_colorized
    def test_xoption_invalid_nframe(self):
        for value in ('-1', 'abc', '1x', '99999999999999999999'):
            with self.subTest(value=value):
                self.check_fails(self.INVALID_XOPTION,
                                 '-X', f'tracemalloc={value}')

    @support.force_not_colorized
    def test_xoption_nframe_out_of_range(self):
        self.check_fails(self.OUT_OF_RANGE, '-X', 'tracemalloc=65536')

    def test_xoption_zero_does_not_trace(self):
        self.check_not_tracing('-X', 'tracemalloc=0')

    @support.force_not_colorized
    def test_env_var_invalid_nframe(self):
        for value in ('-1', 'abc', '1x', '99999999999999999999'):
            with self.subTest(value=value):
                self.check_fails(self.INVALID_ENV_VAR,
                                 PYTHONTRACEMALLOC=value)

    @support.force_not_colorized
    def test_env_var_nframe_out_of_range(self):
        self.check_fails(self.OUT_OF_RANGE, PYTHONTRACEMALLOC='65536')

    def test_env_var_zero_does_not_trace(self):
        self.check_not_tracing(PYTHONTRACEMALLOC='0')


if __name__ == '__main__':
    unittest.main()
