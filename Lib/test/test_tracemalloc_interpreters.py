"""Tests for tracemalloc with several interpreters.

Each interpreter traces on its own: every tracemalloc function acts on the
calling interpreter only, and a memory block belongs to the interpreter
whose thread state was attached when it was allocated (see the comment at
the top of Python/tracemalloc.c).

Subinterpreters are created both isolated (own GIL, own obmalloc) and
legacy (shared GIL and obmalloc).  Scenarios that could crash the process
run in a child process.
"""

import ast
import gc
import inspect
import os
import sys
import textwrap
import threading
import tracemalloc
import unittest
from test import support
from test.support import import_helper
from test.support import script_helper
from test.support import threading_helper

_interpreters = import_helper.import_module('_interpreters')
_testcapi = import_helper.import_module('_testcapi')
_testinternalcapi = import_helper.import_module('_testinternalcapi')


# A domain of its own for the blocks tracked with the C API; the pointers
# tracked in it are never dereferenced, so any value does.
DOMAIN = 5
PTR = 0x5eed0000
SIZE = 123_457
BIG = 1024 * 1024

# How _testinternalcapi.tracemalloc_track_rc() and tracemalloc_untrack_rc()
# call PyTraceMalloc_Track() and PyTraceMalloc_Untrack().
ATTACHED = 0        # with the thread state attached
DETACHED = 1        # with the thread state detached (GIL released)
NO_TSTATE = 2       # from a bare C thread that has no thread state at all

NOT_TRACING = -2    # PyTraceMalloc_Track()/Untrack(): not tracing


# --- Helpers shared with the subinterpreters ---------------------------------
#
# The source of these functions is sent to every subinterpreter (and child
# process) the tests create, so both sides use the same code.

def alloc_from(filename, size):
    """Return a new bytes object of size bytes, allocated by code whose file
    name is filename, so that its trace is easy to find.

    That code creates no other object, and the GC cannot run in it: an
    object taken from a free list there (by a weakref callback, say) would
    leave a trace from filename once back in its free list."""
    code = compile("data = b'x' * size", filename, 'exec')
    namespace = {'size': size}
    enabled = gc.isenabled()
    gc.disable()
    try:
        exec(code, namespace)
    finally:
        if enabled:
            gc.enable()
    return namespace['data']


def traced_size(filename, snapshot=None):
    """Total size of the traces of snapshot (by default, of the calling
    interpreter) that have a frame in filename."""
    if snapshot is None:
        snapshot = tracemalloc.take_snapshot()
    # Much faster than filter_traces() with a Filter(all_frames=True) when
    # the whole start-up was traced.  Raw traces: (domain, size, frames, n).
    return sum(size for _, size, frames, _ in snapshot.traces._traces
               if any(frame[0] == filename for frame in frames))


def domain_size(domain):
    """Total size of the calling interpreter's traces in domain."""
    snapshot = tracemalloc.take_snapshot()
    snapshot = snapshot.filter_traces([tracemalloc.DomainFilter(True, domain)])
    return sum(trace.size for trace in snapshot.traces)


def traced_totals():
    """Return (traced memory, sum of the sizes of the traces) of the calling
    interpreter, which must be quiescent: they must be equal.

    take_snapshot() allocates, so use _get_traces(), whose own objects are
    not traced, and read the traced memory right after it; the GC is
    disabled so that it cannot free a traced block in between."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        traces = tracemalloc._get_traces()
        traced = tracemalloc.get_traced_memory()[0]
    finally:
        if enabled:
            gc.enable()
    return traced, sum(trace[1] for trace in traces)


def frames_of(traceback):
    """A tracemalloc.Traceback as a tuple of (filename, lineno), or None."""
    if traceback is None:
        return None
    return tuple((frame.filename, frame.lineno) for frame in traceback)


def call_nested(depth, func):
    """Call func() with depth more frames on the stack."""
    if depth <= 0:
        return func()
    return call_nested(depth - 1, func)


FREELIST_CODE = """\
x = 1.5
y = 2.5
gc.collect()  # empties the free lists
f = x * y; t = (x, y); l = [x]; d = {}
del f, t, l, d
f = x * y
t = (x, y)
l = [x]
d = {}
"""

def freelist_tracebacks():
    """Run FREELIST_CODE (file name '<freelist>'): it creates objects, frees
    them into their free lists and creates them again, on lines 6 to 9.
    Return the traceback of each object created again."""
    namespace = {'gc': gc}
    exec(compile(FREELIST_CODE, '<freelist>', 'exec'), namespace)
    return [frames_of(tracemalloc.get_object_traceback(namespace[name]))
            for name in 'ftld']


NTHREADS = 4
NBLOCKS = 100

def run_threads(filename):
    """Run NTHREADS threads that allocate from filename, each keeping
    NBLOCKS blocks alive and freeing as many; return the blocks kept.
    The GC is disabled meanwhile (see alloc_from())."""
    kept = []
    def work():
        blocks = []
        for i in range(NBLOCKS):
            blocks.append(alloc_from(filename, 1000 + i))
            alloc_from(filename, 5000)      # freed at once
        kept.extend(blocks)
    threads = [threading.Thread(target=work) for _ in range(NTHREADS)]
    enabled = gc.isenabled()
    gc.disable()
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        if enabled:
            gc.enable()
    return kept


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


HELPERS = (alloc_from, traced_size, domain_size, traced_totals, frames_of,
           call_nested, freelist_tracebacks, run_threads, run_in)

PRELUDE = '\n'.join([
    'import ast, gc, os, sys, textwrap, threading, tracemalloc',
    'import _testinternalcapi',
    *(f'{name} = {globals()[name]!r}'
      for name in ('DOMAIN', 'PTR', 'SIZE', 'BIG', 'ATTACHED', 'DETACHED',
                   'NO_TSTATE', 'NOT_TRACING', 'FREELIST_CODE',
                   'NTHREADS', 'NBLOCKS')),
    *(inspect.getsource(func) for func in HELPERS),
])


def new_interp(config):
    """Create a subinterpreter with the helpers above defined in it."""
    interp = _interpreters.create(config)
    try:
        run_in(interp, PRELUDE)
    except BaseException:
        _interpreters.destroy(interp)
        raise
    return interp


def destroy_interp(interp):
    try:
        _interpreters.destroy(interp)
    except _interpreters.InterpreterError:
        pass  # already destroyed


def child_script(source):
    """The source of a child process: the helpers, then source."""
    return '\n'.join([PRELUDE, f'PRELUDE = {PRELUDE!r}',
                      'import _interpreters', textwrap.dedent(source)])


def start_and_stop_meanwhile(func):
    """Return func(), called while another thread starts and stops tracing
    in a loop."""
    done = threading.Event()

    def start_and_stop():
        while not done.is_set():
            tracemalloc.start()
            tracemalloc.stop()

    thread = threading.Thread(target=start_and_stop)
    thread.start()
    try:
        return func()
    finally:
        done.set()
        thread.join()


class SubinterpreterTestCase(unittest.TestCase):
    """Base class: each test gets a subinterpreter of kind `config` in
    self.sub; the main interpreter does not trace when a test starts."""

    config = None   # set by the concrete classes

    def setUp(self):
        if tracemalloc.is_tracing():
            self.skipTest("tracemalloc must be stopped before the test")
        # last: the subinterpreters a test made and destroyed, tracing,
        # leave their leftovers, which the next test must not find
        self.addCleanup(tracemalloc.clear_leftovers)
        self.addCleanup(tracemalloc.stop)
        self.sub = self.new_interp()

    def new_interp(self, config=None):
        interp = new_interp(config or self.config)
        self.addCleanup(destroy_interp, interp)
        return interp

    def run_in(self, interp, source, **shared):
        return run_in(interp, source, **shared)

    def sub_track(self, how=ATTACHED):
        """Track (DOMAIN, PTR, SIZE) in self.sub; return the result code."""
        return self.run_in(self.sub, """
            result = _testinternalcapi.tracemalloc_track_rc(DOMAIN, PTR, SIZE, how)
            """, how=how)

    def assertTotalsAgree(self, totals):
        traced, sum_of_traces = totals
        self.assertEqual(traced, sum_of_traces,
                         "traced memory differs from the sum of the traces")


# --- Importing ---------------------------------------------------------------

class TestImport(unittest.TestCase):

    def check_import(self, config):
        interp = _interpreters.create(config)
        self.addCleanup(destroy_interp, interp)
        result = run_in(interp, """
            import tracemalloc
            result = (tracemalloc.is_tracing(),
                      tracemalloc.get_traceback_limit(),
                      tracemalloc.get_traced_memory())
            """)
        self.assertEqual(result, (False, 1, (0, 0)))

    def test_import_in_isolated_subinterpreter(self):
        self.check_import('isolated')

    def test_import_in_legacy_subinterpreter(self):
        self.check_import('legacy')

    def test_import_in_isolated_subinterpreter_while_main_traces(self):
        if tracemalloc.is_tracing():
            self.skipTest("tracemalloc must be stopped before the test")
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)
        self.check_import('isolated')
        self.assertTrue(tracemalloc.is_tracing())


# --- Every function acts on the calling interpreter only ---------------------

class StateTests:

    def test_start_in_sub_does_not_start_main(self):
        self.run_in(self.sub, "tracemalloc.start()")
        self.assertTrue(self.run_in(self.sub,
                                    "result = tracemalloc.is_tracing()"))
        self.assertFalse(tracemalloc.is_tracing())
        self.assertEqual(tracemalloc.get_traced_memory(), (0, 0))
        data = alloc_from('<main-alloc>', BIG)
        self.assertIsNone(tracemalloc.get_object_traceback(data))
        self.assertEqual(tracemalloc.get_traced_memory(), (0, 0))
        with self.assertRaises(RuntimeError):
            tracemalloc.take_snapshot()

    def test_start_in_main_does_not_start_sub(self):
        tracemalloc.start()
        result = self.run_in(self.sub, """
            data = alloc_from('<sub-alloc>', BIG)
            try:
                tracemalloc.take_snapshot()
            except RuntimeError:
                snapshot_error = True
            else:
                snapshot_error = False
            result = (tracemalloc.is_tracing(),
                      tracemalloc.get_traced_memory(),
                      tracemalloc.get_object_traceback(data),
                      snapshot_error)
            """)
        self.assertEqual(result, (False, (0, 0), None, True))
        self.assertTrue(tracemalloc.is_tracing())

    def test_new_sub_has_default_traceback_limit(self):
        tracemalloc.start(5)
        sub = self.new_interp()
        result = self.run_in(sub, """
            result = (tracemalloc.is_tracing(),
                      tracemalloc.get_traceback_limit())
            """)
        self.assertEqual(result, (False, 1))

    def test_traceback_limits_are_separate(self):
        tracemalloc.start(5)
        self.run_in(self.sub, "tracemalloc.start(2)")
        self.assertEqual(tracemalloc.get_traceback_limit(), 5)
        self.assertEqual(
            self.run_in(self.sub, "result = tracemalloc.get_traceback_limit()"),
            2)

        # the limit is the one of the interpreter that allocates
        data = call_nested(10, lambda: alloc_from('<main-alloc>', 100))
        self.assertEqual(len(tracemalloc.get_object_traceback(data)), 5)
        result = self.run_in(self.sub, """
            data = call_nested(10, lambda: alloc_from('<sub-alloc>', 100))
            result = len(tracemalloc.get_object_traceback(data))
            """)
        self.assertEqual(result, 2)

        # stopping the sub keeps its last limit and leaves main's alone
        result = self.run_in(self.sub, """
            tracemalloc.stop()
            result = tracemalloc.get_traceback_limit()
            """)
        self.assertEqual(result, 2)
        self.assertEqual(tracemalloc.get_traceback_limit(), 5)

        # restarting the sub with another limit leaves main's alone
        self.run_in(self.sub, "tracemalloc.start(3)")
        self.assertEqual(tracemalloc.get_traceback_limit(), 5)
        self.assertEqual(
            self.run_in(self.sub, "result = tracemalloc.get_traceback_limit()"),
            3)

    def test_invalid_limit_in_sub_leaves_main_alone(self):
        tracemalloc.start(4)
        result = self.run_in(self.sub, """
            try:
                tracemalloc.start(0)
            except ValueError:
                result = (True, tracemalloc.is_tracing())
            else:
                result = (False, tracemalloc.is_tracing())
            """)
        self.assertEqual(result, (True, False))
        self.assertTrue(tracemalloc.is_tracing())
        self.assertEqual(tracemalloc.get_traceback_limit(), 4)

    def test_clear_traces_in_sub_keeps_main_traces(self):
        tracemalloc.start()
        main_data = alloc_from('<main-alloc>', BIG)
        result = self.run_in(self.sub, """
            tracemalloc.start()
            data = alloc_from('<sub-alloc>', BIG)
            before = tracemalloc.get_object_traceback(data) is not None
            tracemalloc.clear_traces()
            result = (before,
                      tracemalloc.get_object_traceback(data),
                      traced_size('<sub-alloc>'),
                      tracemalloc.is_tracing())
            """)
        self.assertEqual(result, (True, None, 0, True))
        self.assertEqual(frames_of(tracemalloc.get_object_traceback(main_data)),
                         (('<main-alloc>', 1),))
        self.assertEqual(traced_size('<main-alloc>'), sys.getsizeof(main_data))
        self.assertGreaterEqual(tracemalloc.get_traced_memory()[0], BIG)

    def test_clear_traces_in_main_keeps_sub_traces(self):
        tracemalloc.start()
        self.run_in(self.sub, """
            tracemalloc.start()
            data = alloc_from('<sub-alloc>', BIG)
            """)
        main_data = alloc_from('<main-alloc>', BIG)
        tracemalloc.clear_traces()
        self.assertIsNone(tracemalloc.get_object_traceback(main_data))
        self.assertEqual(traced_size('<main-alloc>'), 0)
        result = self.run_in(self.sub, """
            result = (frames_of(tracemalloc.get_object_traceback(data)),
                      traced_size('<sub-alloc>') == sys.getsizeof(data),
                      tracemalloc.get_traced_memory()[0] >= BIG)
            """)
        self.assertEqual(result, ((('<sub-alloc>', 1),), True, True))

    def test_stop_in_sub_keeps_main_tracing(self):
        tracemalloc.start()
        data = alloc_from('<main-alloc>', BIG)
        result = self.run_in(self.sub, """
            tracemalloc.start()
            data = alloc_from('<sub-alloc>', BIG)
            tracemalloc.stop()
            result = (tracemalloc.is_tracing(),
                      tracemalloc.get_traced_memory(),
                      tracemalloc.get_object_traceback(data))
            """)
        self.assertEqual(result, (False, (0, 0), None))
        self.assertTrue(tracemalloc.is_tracing())
        self.assertEqual(frames_of(tracemalloc.get_object_traceback(data)),
                         (('<main-alloc>', 1),))
        # main goes on tracing new blocks
        data2 = alloc_from('<main-alloc2>', BIG)
        self.assertEqual(traced_size('<main-alloc2>'), sys.getsizeof(data2))
        self.assertEqual(traced_size('<main-alloc>'), sys.getsizeof(data))
        self.assertTotalsAgree(traced_totals())

    def test_stop_in_main_keeps_sub_tracing(self):
        tracemalloc.start()
        self.run_in(self.sub, """
            tracemalloc.start()
            data = alloc_from('<sub-alloc>', BIG)
            """)
        main_data = alloc_from('<main-alloc>', BIG)
        tracemalloc.stop()
        self.assertFalse(tracemalloc.is_tracing())
        self.assertEqual(tracemalloc.get_traced_memory(), (0, 0))
        self.assertIsNone(tracemalloc.get_object_traceback(main_data))
        result = self.run_in(self.sub, """
            data2 = alloc_from('<sub-alloc2>', BIG)
            result = (tracemalloc.is_tracing(),
                      frames_of(tracemalloc.get_object_traceback(data)),
                      traced_size('<sub-alloc>') == sys.getsizeof(data),
                      traced_size('<sub-alloc2>') == sys.getsizeof(data2),
                      traced_totals())
            """)
        self.assertEqual(result[:4], (True, (('<sub-alloc>', 1),), True, True))
        self.assertTotalsAgree(result[4])

    def test_traced_memory_is_per_interpreter(self):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        main_before = tracemalloc.get_traced_memory()
        result = self.run_in(self.sub, """
            data = [alloc_from('<sub-alloc>', BIG) for _ in range(10)]
            result = tracemalloc.get_traced_memory()
            """)
        size, peak = result
        self.assertGreaterEqual(size, 10 * BIG)
        self.assertGreaterEqual(peak, size)
        main_after = tracemalloc.get_traced_memory()
        self.assertLess(main_after[0] - main_before[0], BIG)
        self.assertLess(main_after[1] - main_before[1], BIG)

        main_data = [alloc_from('<main-alloc>', BIG) for _ in range(5)]
        self.assertGreaterEqual(tracemalloc.get_traced_memory()[0], 5 * BIG)
        size2, peak2 = self.run_in(self.sub,
                                   "result = tracemalloc.get_traced_memory()")
        self.assertLess(abs(size2 - size), BIG)
        self.assertLess(peak2 - peak, BIG)

    def test_reset_peak_is_per_interpreter(self):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        # a temporary allocation raises the peak of each interpreter
        alloc_from('<main-alloc>', 10 * BIG)
        sub_peak = self.run_in(self.sub, """
            alloc_from('<sub-alloc>', 10 * BIG)
            result = tracemalloc.get_traced_memory()[1]
            """)
        self.assertGreaterEqual(sub_peak, 10 * BIG)
        main_size, main_peak = tracemalloc.get_traced_memory()
        self.assertGreaterEqual(main_peak, main_size + 9 * BIG)

        # reset_peak() in the sub resets the sub's peak only
        sub_size, sub_peak2 = self.run_in(self.sub, """
            tracemalloc.reset_peak()
            result = tracemalloc.get_traced_memory()
            """)
        self.assertLess(sub_peak2, 9 * BIG)
        self.assertGreaterEqual(tracemalloc.get_traced_memory()[1], main_peak)

        # and reset_peak() in main resets main's only
        tracemalloc.reset_peak()
        self.assertLess(tracemalloc.get_traced_memory()[1], main_peak - 9 * BIG)
        self.assertEqual(self.run_in(self.sub, """
            alloc_from('<sub-alloc>', 10 * BIG)
            tracemalloc.reset_peak()
            alloc_from('<sub-alloc>', 5 * BIG)
            result = tracemalloc.get_traced_memory()[1] >= 5 * BIG
            """), True)

    def test_tracemalloc_memory_is_per_interpreter(self):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        main_before = tracemalloc.get_tracemalloc_memory()
        # many traces make the sub's tables grow
        sub_before, sub_after = self.run_in(self.sub, """
            before = tracemalloc.get_tracemalloc_memory()
            data = [b'x' * size for size in range(100, 10_100)]
            result = (before, tracemalloc.get_tracemalloc_memory())
            """)
        growth = sub_after - sub_before
        self.assertGreater(growth, 100_000)
        main_after = tracemalloc.get_tracemalloc_memory()
        self.assertLess(main_after - main_before, growth // 2)

        # clear_traces() in the sub shrinks the sub's tables only
        result = self.run_in(self.sub, """
            tracemalloc.clear_traces()
            result = tracemalloc.get_tracemalloc_memory()
            """)
        self.assertLess(result, sub_after)
        self.assertGreater(tracemalloc.get_tracemalloc_memory(), 0)

    def test_get_object_traceback_is_per_interpreter(self):
        tracemalloc.start()
        main_data = alloc_from('<main-alloc>', BIG)
        main_ptr = id(main_data)   # bytes have no pre-header
        sub_ptr, sub_frames, main_block_in_sub = self.run_in(self.sub, """
            tracemalloc.start()
            data = alloc_from('<sub-alloc>', BIG)
            result = (id(data),
                      _testinternalcapi._PyTraceMalloc_GetTraceback(0, id(data)),
                      _testinternalcapi._PyTraceMalloc_GetTraceback(0, main_ptr))
            """, main_ptr=main_ptr)
        self.assertEqual(sub_frames, (('<sub-alloc>', 1),))
        self.assertIsNone(main_block_in_sub)
        self.assertIsNone(_testinternalcapi._PyTraceMalloc_GetTraceback(0, sub_ptr))
        self.assertEqual(_testinternalcapi._PyTraceMalloc_GetTraceback(0, main_ptr),
                         (('<main-alloc>', 1),))

    def test_two_subinterpreters(self):
        other = self.new_interp()
        self.run_in(self.sub, "tracemalloc.start(3)")
        result = self.run_in(other, """
            data = alloc_from('<other-alloc>', BIG)
            result = (tracemalloc.is_tracing(),
                      tracemalloc.get_traceback_limit(),
                      tracemalloc.get_object_traceback(data))
            """)
        self.assertEqual(result, (False, 1, None))
        result = self.run_in(self.sub, """
            result = (tracemalloc.is_tracing(),
                      tracemalloc.get_traceback_limit(),
                      traced_size('<other-alloc>'))
            """)
        self.assertEqual(result, (True, 3, 0))
        self.assertFalse(tracemalloc.is_tracing())


class TestStateIsolated(StateTests, SubinterpreterTestCase):
    config = 'isolated'


class TestStateLegacy(StateTests, SubinterpreterTestCase):
    config = 'legacy'


# --- A snapshot holds only the calling interpreter's blocks ------------------

class SnapshotTests:

    def test_main_snapshot_has_no_sub_blocks(self):
        tracemalloc.start()
        main_data = alloc_from('<main-alloc>', BIG)
        sub_size, sub_expected = self.run_in(self.sub, """
            tracemalloc.start()
            data = [alloc_from('<sub-alloc>', BIG)]
            data += [alloc_from('<sub-alloc>', 100) for _ in range(100)]
            result = (traced_size('<sub-alloc>'),
                      sum(sys.getsizeof(obj) for obj in data))
            """)
        self.assertEqual(sub_size, sub_expected)
        snapshot = tracemalloc.take_snapshot()
        self.assertEqual(traced_size('<sub-alloc>', snapshot), 0)
        self.assertEqual(traced_size('<main-alloc>', snapshot),
                         sys.getsizeof(main_data))

    def test_sub_snapshot_has_no_main_blocks(self):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        data = [alloc_from('<main-alloc>', BIG)]
        data += [alloc_from('<main-alloc>', 100) for _ in range(100)]
        self.assertEqual(traced_size('<main-alloc>'),
                         sum(sys.getsizeof(obj) for obj in data))
        result = self.run_in(self.sub, """
            data = alloc_from('<sub-alloc>', BIG)
            snapshot = tracemalloc.take_snapshot()
            result = (traced_size('<main-alloc>', snapshot),
                      traced_size('<sub-alloc>', snapshot) == sys.getsizeof(data))
            """)
        self.assertEqual(result, (0, True))

    def test_snapshot_uses_calling_interpreter_limit(self):
        tracemalloc.start(7)
        result = self.run_in(self.sub, """
            tracemalloc.start(3)
            data = call_nested(10, lambda: alloc_from('<sub-alloc>', 100))
            snapshot = tracemalloc.take_snapshot()
            result = (snapshot.traceback_limit,
                      max(len(trace.traceback) for trace in snapshot.traces))
            """)
        self.assertEqual(result, (3, 3))
        data = call_nested(10, lambda: alloc_from('<main-alloc>', 100))
        snapshot = tracemalloc.take_snapshot()
        self.assertEqual(snapshot.traceback_limit, 7)
        self.assertEqual(max(len(trace.traceback) for trace in snapshot.traces),
                         7)

    def test_snapshot_of_sub_after_main_stops(self):
        tracemalloc.start()
        self.run_in(self.sub, """
            tracemalloc.start()
            data = alloc_from('<sub-alloc>', BIG)
            """)
        tracemalloc.stop()
        with self.assertRaises(RuntimeError):
            tracemalloc.take_snapshot()
        result = self.run_in(self.sub, """
            snapshot = tracemalloc.take_snapshot()
            result = traced_size('<sub-alloc>', snapshot) == sys.getsizeof(data)
            """)
        self.assertTrue(result)


class TestSnapshotIsolated(SnapshotTests, SubinterpreterTestCase):
    config = 'isolated'


class TestSnapshotLegacy(SnapshotTests, SubinterpreterTestCase):
    config = 'legacy'


# --- A block belongs to the interpreter whose thread state is attached -------

class AttributionTests:

    def test_untraced_sub_blocks_not_given_to_main(self):
        tracemalloc.start()
        size_before = tracemalloc.get_traced_memory()[0]
        self.run_in(self.sub, """
            data = [alloc_from('<sub-alloc>', BIG) for _ in range(10)]
            """)
        self.assertLess(tracemalloc.get_traced_memory()[0] - size_before, BIG)
        self.assertEqual(traced_size('<sub-alloc>'), 0)

    def test_untraced_main_blocks_not_given_to_sub(self):
        self.run_in(self.sub, "tracemalloc.start()")
        size_before = self.run_in(self.sub,
                                  "result = tracemalloc.get_traced_memory()[0]")
        data = [alloc_from('<main-alloc>', BIG) for _ in range(10)]
        result = self.run_in(self.sub, """
            result = (tracemalloc.get_traced_memory()[0], traced_size('<main-alloc>'))
            """)
        self.assertLess(result[0] - size_before, BIG)
        self.assertEqual(result[1], 0)

    @threading_helper.requires_working_threading()
    def test_sub_run_from_another_main_thread(self):
        # the sub's code runs in a thread started by main: its thread state
        # there belongs to the sub
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        results = []
        def run():
            results.append(self.run_in(self.sub, """
                data = alloc_from('<sub-alloc>', BIG)
                result = traced_size('<sub-alloc>') == sys.getsizeof(data)
                """))
        thread = threading.Thread(target=run)
        thread.start()
        thread.join()
        self.assertEqual(results, [True])
        self.assertEqual(traced_size('<sub-alloc>'), 0)
        # the block is the sub's, whichever thread runs the sub next
        self.assertTrue(self.run_in(self.sub, """
            result = traced_size('<sub-alloc>') == sys.getsizeof(data)
            """))

    @threading_helper.requires_working_threading()
    def test_thread_of_sub(self):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        result = self.run_in(self.sub, """
            data = []
            thread = threading.Thread(
                target=lambda: data.append(alloc_from('<sub-thread>', BIG)))
            thread.start()
            thread.join()
            result = traced_size('<sub-thread>') == sys.getsizeof(data[0])
            """)
        self.assertTrue(result)
        self.assertEqual(traced_size('<sub-thread>'), 0)

    def test_nested_subinterpreter(self):
        # the sub creates a sub of its own and runs code in it: the blocks
        # of that code are the nested sub's, which does not trace
        self.run_in(self.sub, "tracemalloc.start()")
        result = self.run_in(self.sub, """
            import _interpreters
            nested = _interpreters.create(config)
            try:
                nested_result = run_in(nested, '''
                    import tracemalloc
                    data = bytes(BIG)
                    exec(compile('data2 = bytes(BIG)', '<nested-alloc>', 'exec'))
                    result = tracemalloc.is_tracing()
                    ''', BIG=BIG)
                snapshot = tracemalloc.take_snapshot()
            finally:
                _interpreters.destroy(nested)
            result = (nested_result, traced_size('<nested-alloc>', snapshot),
                      max(trace.size for trace in snapshot.traces) < BIG)
            """, config=self.config)
        self.assertEqual(result, (False, 0, True))

    def test_nested_subinterpreter_that_traces(self):
        self.run_in(self.sub, "tracemalloc.start()")
        result = self.run_in(self.sub, """
            import _interpreters
            nested = _interpreters.create(config)
            try:
                run_in(nested, PRELUDE)
                nested_result = run_in(nested, '''
                    tracemalloc.start()
                    data = alloc_from('<nested-alloc>', BIG)
                    result = traced_size('<nested-alloc>') == sys.getsizeof(data)
                    ''')
            finally:
                _interpreters.destroy(nested)
            result = (nested_result, traced_size('<nested-alloc>'))
            """, config=self.config, PRELUDE=PRELUDE)
        self.assertEqual(result, (True, 0))
        self.assertFalse(tracemalloc.is_tracing())


class TestAttributionIsolated(AttributionTests, SubinterpreterTestCase):
    config = 'isolated'


class TestAttributionLegacy(AttributionTests, SubinterpreterTestCase):
    config = 'legacy'


# --- Frees drop the trace from its owner, exactly once -----------------------

class FreeTests:

    def sub_figures(self):
        """The sub's traced size in DOMAIN, traceback of PTR, and totals."""
        return self.run_in(self.sub, """
            result = (domain_size(DOMAIN),
                      _testinternalcapi._PyTraceMalloc_GetTraceback(DOMAIN, PTR),
                      traced_totals())
            """)

    def check_untrack_sub_block_from_main(self, how, main_traces):
        if main_traces:
            tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        self.assertEqual(self.sub_track(), 0)
        size, traceback, totals = self.sub_figures()
        self.assertEqual(size, SIZE)
        self.assertIsNotNone(traceback)
        self.assertTotalsAgree(totals)

        # main frees the sub's block: the sub loses the trace and its bytes
        self.assertEqual(_testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR, how),
                         0)
        size, traceback, totals = self.sub_figures()
        self.assertEqual((size, traceback), (0, None))
        self.assertTotalsAgree(totals)

        # ... once: freeing it again changes nothing.  Nobody has it now, so
        # the result says whether the caller's interpreter traces: main's
        # (a bare C thread's is main too, where its blocks would go)
        rc = _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR, how)
        self.assertEqual(rc, 0 if main_traces else NOT_TRACING)
        size, traceback, totals = self.sub_figures()
        self.assertEqual((size, traceback), (0, None))
        self.assertTotalsAgree(totals)
        if main_traces:
            self.assertEqual(domain_size(DOMAIN), 0)
            self.assertTotalsAgree(traced_totals())

    def test_untrack_sub_block_from_main(self):
        for how in (ATTACHED, DETACHED):
            with self.subTest(how=how):
                self.check_untrack_sub_block_from_main(how, main_traces=False)

    def test_untrack_sub_block_from_tracing_main(self):
        for how in (ATTACHED, DETACHED):
            with self.subTest(how=how):
                self.check_untrack_sub_block_from_main(how, main_traces=True)
                tracemalloc.stop()

    @threading_helper.requires_working_threading()
    def test_untrack_sub_blocks_while_main_starts_and_stops(self):
        # Main frees blocks of the sub while another thread of main starts
        # and stops tracing: a miss in main's own traces, read while main
        # joins or leaves the tracing interpreters, must not hide the sub's.
        # (Concurrent only without a GIL; in order otherwise.)
        nblocks = 3000
        self.run_in(self.sub, f"""
            tracemalloc.start()
            for i in range({nblocks}):
                _testinternalcapi.tracemalloc_track_rc(
                    DOMAIN, PTR + 16 * i, 1, ATTACHED)
            result = domain_size(DOMAIN)
            """)

        def untrack_all():
            for i in range(nblocks):
                _testinternalcapi.tracemalloc_untrack_rc(
                    DOMAIN, PTR + 16 * i, ATTACHED)

        start_and_stop_meanwhile(untrack_all)
        self.assertEqual(self.run_in(self.sub, "result = domain_size(DOMAIN)"),
                         0)

    def test_untrack_sub_block_from_thread_without_tstate(self):
        for main_traces in (False, True):
            with self.subTest(main_traces=main_traces):
                self.check_untrack_sub_block_from_main(NO_TSTATE, main_traces)
                tracemalloc.stop()

    def test_untrack_main_block_from_sub(self):
        tracemalloc.start()
        for how in (ATTACHED, DETACHED):
            with self.subTest(how=how):
                self.assertEqual(
                    _testinternalcapi.tracemalloc_track_rc(DOMAIN, PTR, SIZE), 0)
                self.assertEqual(domain_size(DOMAIN), SIZE)
                untrack = """
                    result = _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR, how)
                    """
                self.assertEqual(self.run_in(self.sub, untrack, how=how), 0)
                self.assertEqual(domain_size(DOMAIN), 0)
                self.assertIsNone(
                    _testinternalcapi._PyTraceMalloc_GetTraceback(DOMAIN, PTR))
                self.assertTotalsAgree(traced_totals())
                # ... once: then nobody has it, and the sub does not trace
                self.assertEqual(self.run_in(self.sub, untrack, how=ATTACHED),
                                 NOT_TRACING)
                self.assertEqual(domain_size(DOMAIN), 0)
                self.assertTotalsAgree(traced_totals())

    def test_untrack_main_block_from_tracing_sub(self):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        self.assertEqual(
            _testinternalcapi.tracemalloc_track_rc(DOMAIN, PTR, SIZE), 0)
        result = self.run_in(self.sub, """
            result = [_testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR)
                      for _ in range(2)]
            result.append(domain_size(DOMAIN))
            """)
        self.assertEqual(result, [0, 0, 0])
        self.assertEqual(domain_size(DOMAIN), 0)
        self.assertTotalsAgree(traced_totals())

    def check_untrack_block_both_trace(self, how, main_first):
        # The sub and main both trace (DOMAIN, PTR) (one trace is stale: a
        # block freed without being untracked, its address reused).  An
        # untrack takes the trace of the interpreter the caller runs in, or
        # with no thread state attached, last ran in; the other one stays.
        if main_first:
            tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        if not main_first:
            tracemalloc.start()
        self.assertEqual(self.sub_track(), 0)
        self.assertEqual(
            _testinternalcapi.tracemalloc_track_rc(DOMAIN, PTR, SIZE), 0)

        self.assertEqual(
            _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR, how), 0)
        self.assertIsNone(
            _testinternalcapi._PyTraceMalloc_GetTraceback(DOMAIN, PTR))
        self.assertEqual(domain_size(DOMAIN), 0)
        size, traceback, totals = self.sub_figures()
        self.assertEqual(size, SIZE)
        self.assertIsNotNone(traceback)

        # and the same from the sub
        self.assertEqual(
            _testinternalcapi.tracemalloc_track_rc(DOMAIN, PTR, SIZE), 0)
        self.assertEqual(self.run_in(self.sub, """
            result = _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR, how)
            """, how=how), 0)
        size, traceback, totals = self.sub_figures()
        self.assertEqual((size, traceback), (0, None))
        self.assertEqual(domain_size(DOMAIN), SIZE)
        self.assertTotalsAgree(totals)
        self.assertTotalsAgree(traced_totals())

    def test_untrack_block_both_trace(self):
        for how in (ATTACHED, DETACHED):
            for main_first in (True, False):
                with self.subTest(how=how, main_first=main_first):
                    try:
                        self.check_untrack_block_both_trace(how, main_first)
                    finally:
                        tracemalloc.stop()
                        self.run_in(self.sub, "tracemalloc.stop()")

    def test_untrack_in_untraced_interpreter_of_untracked_block(self):
        # nobody has the block: "not tracing" is about the caller
        self.run_in(self.sub, "tracemalloc.start()")
        self.assertEqual(
            _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR), NOT_TRACING)
        self.assertEqual(self.run_in(self.sub, """
            result = _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR)
            """), 0)

    def test_blocks_tracked_before_start_are_ignored(self):
        self.assertEqual(self.sub_track(), NOT_TRACING)
        self.run_in(self.sub, "tracemalloc.start()")
        tracemalloc.start()
        self.assertEqual(
            _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR), 0)
        self.assertEqual(self.run_in(self.sub, """
            result = _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR)
            """), 0)
        size, traceback, totals = self.sub_figures()
        self.assertEqual((size, traceback), (0, None))
        self.assertTotalsAgree(totals)

    def test_blocks_allocated_before_start_are_ignored(self):
        # main's block and the sub's are allocated before anyone traces;
        # freeing them later takes nothing from the tracing interpreters
        main_data = alloc_from('<main-alloc>', 10 * BIG)
        self.run_in(self.sub, """
            data = alloc_from('<sub-alloc>', 10 * BIG)
            tracemalloc.start()
            """)
        tracemalloc.start()
        del main_data
        result = self.run_in(self.sub, """
            before = tracemalloc.get_traced_memory()[0]
            del data
            after = tracemalloc.get_traced_memory()[0]
            result = (after - before > -BIG, traced_totals())
            """)
        self.assertTrue(result[0])
        self.assertTotalsAgree(result[1])
        self.assertTotalsAgree(traced_totals())

    @threading_helper.requires_working_threading()
    def test_block_freed_by_another_thread(self):
        self.run_in(self.sub, "tracemalloc.start()")
        result = self.run_in(self.sub, """
            data = []
            thread = threading.Thread(
                target=lambda: data.append(alloc_from('<thread-alloc>', BIG)))
            thread.start()
            thread.join()
            allocated = traced_size('<thread-alloc>') == sys.getsizeof(data[0])
            data.clear()    # freed by the thread that did not allocate it
            freed = traced_size('<thread-alloc>')
            totals = traced_totals()

            # and the other way round
            data = [alloc_from('<sub-alloc>', BIG)]
            thread = threading.Thread(target=data.clear)
            thread.start()
            thread.join()
            result = (allocated, freed, totals, traced_size('<sub-alloc>'),
                      traced_totals())
            """)
        allocated, freed, totals, freed2, totals2 = result
        self.assertEqual((allocated, freed, freed2), (True, 0, 0))
        self.assertTotalsAgree(totals)
        self.assertTotalsAgree(totals2)


class TestFreeIsolated(FreeTests, SubinterpreterTestCase):
    config = 'isolated'


class TestFreeLegacy(FreeTests, SubinterpreterTestCase):
    config = 'legacy'


# --- C API: PyTraceMalloc_Track() and PyTraceMalloc_Untrack() ----------------

class CAPITests:

    def check_track_in_sub(self, how):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start(5)")
        rc, size, traceback = self.run_in(self.sub, """
            ns = dict(globals())
            exec(compile('rc = _testinternalcapi.tracemalloc_track_rc('
                         'DOMAIN, PTR, SIZE, how)', '<track>', 'exec'), ns)
            result = (ns['rc'], domain_size(DOMAIN),
                      _testinternalcapi._PyTraceMalloc_GetTraceback(DOMAIN, PTR))
            """, how=how)
        self.assertEqual(rc, 0)
        self.assertEqual(size, SIZE)
        self.assertIsNotNone(traceback)
        if how == ATTACHED:
            self.assertEqual(traceback[0], ('<track>', 1))
        self.assertEqual(domain_size(DOMAIN), 0)
        self.assertIsNone(
            _testinternalcapi._PyTraceMalloc_GetTraceback(DOMAIN, PTR))

        self.assertEqual(self.run_in(self.sub, """
            rc = _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR, how)
            result = (rc, domain_size(DOMAIN))
            """, how=how), (0, 0))

    def test_track_in_sub(self):
        self.check_track_in_sub(ATTACHED)

    def test_track_in_sub_without_gil(self):
        self.check_track_in_sub(DETACHED)

    @threading_helper.requires_working_threading()
    def test_track_without_gil_in_thread_of_sub(self):
        # in a thread of its own, the thread state bound to the thread is the
        # sub's: a block tracked with the GIL released gets its frames (the
        # first call, with the GIL held, interned the filename)
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start(5)")
        result = self.run_in(self.sub, r"""
            code = compile(
                'rc1 = _testinternalcapi.tracemalloc_track_rc('
                'DOMAIN, PTR, SIZE, ATTACHED)\n'
                'rc2 = _testinternalcapi.tracemalloc_track_rc('
                'DOMAIN, PTR + 1, SIZE, DETACHED)\n',
                '<track>', 'exec')
            ns = dict(globals())
            thread = threading.Thread(target=exec, args=(code, ns))
            thread.start()
            thread.join()
            result = (ns['rc1'], ns['rc2'], domain_size(DOMAIN),
                      _testinternalcapi._PyTraceMalloc_GetTraceback(
                          DOMAIN, PTR + 1)[0])
            """)
        self.assertEqual(result, (0, 0, 2 * SIZE, ('<track>', 2)))
        self.assertEqual(domain_size(DOMAIN), 0)

    def test_track_in_untraced_sub(self):
        tracemalloc.start()
        rc = self.run_in(self.sub, """
            result = _testinternalcapi.tracemalloc_track_rc(DOMAIN, PTR, SIZE)
            """)
        self.assertEqual(rc, NOT_TRACING)
        self.assertEqual(domain_size(DOMAIN), 0)

    def test_track_without_gil_in_untraced_sub(self):
        # The thread last ran the sub, which does not trace: with the GIL
        # released or not, the block is the sub's, so nobody traces it.  It
        # is not main's: main's snapshot holds only main's blocks.
        tracemalloc.start()
        rc = self.run_in(self.sub, """
            result = _testinternalcapi.tracemalloc_track_rc(
                DOMAIN, PTR, SIZE, DETACHED)
            """)
        self.assertEqual(domain_size(DOMAIN), 0)
        self.assertEqual(rc, NOT_TRACING)

    def test_track_in_untraced_main(self):
        self.run_in(self.sub, "tracemalloc.start()")
        for how in (ATTACHED, DETACHED):
            with self.subTest(how=how):
                self.assertEqual(
                    _testinternalcapi.tracemalloc_track_rc(DOMAIN, PTR, SIZE, how),
                    NOT_TRACING)
                self.assertEqual(self.run_in(self.sub,
                                             "result = domain_size(DOMAIN)"), 0)

    def test_testcapi_helpers_raise_when_main_does_not_trace(self):
        # _testcapi's helpers raise RuntimeError on a negative result code
        self.run_in(self.sub, "tracemalloc.start()")
        for release_gil in (False, True):
            with self.subTest(release_gil=release_gil):
                with self.assertRaises(RuntimeError):
                    _testcapi.tracemalloc_track(DOMAIN, PTR, SIZE, release_gil)
                with self.assertRaises(RuntimeError):
                    _testcapi.tracemalloc_untrack(DOMAIN, PTR, release_gil)
        self.assertEqual(self.run_in(self.sub, "result = domain_size(DOMAIN)"),
                         0)

    def test_testcapi_helpers_in_main_while_sub_traces(self):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        for release_gil in (False, True):
            with self.subTest(release_gil=release_gil):
                _testcapi.tracemalloc_track(DOMAIN, PTR, SIZE, release_gil)
                self.assertEqual(domain_size(DOMAIN), SIZE)
                self.assertEqual(
                    self.run_in(self.sub, "result = domain_size(DOMAIN)"), 0)
                _testcapi.tracemalloc_untrack(DOMAIN, PTR, release_gil)
                self.assertEqual(domain_size(DOMAIN), 0)

    def test_track_without_tstate_goes_to_main(self):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        self.assertEqual(self.run_in(self.sub, """
            result = _testinternalcapi.tracemalloc_track_rc(
                DOMAIN, PTR, SIZE, NO_TSTATE)
            """), 0)
        self.assertEqual(domain_size(DOMAIN), SIZE)
        self.assertEqual(
            _testinternalcapi._PyTraceMalloc_GetTraceback(DOMAIN, PTR),
            (('<unknown>', 0),))
        self.assertEqual(self.run_in(self.sub, "result = domain_size(DOMAIN)"),
                         0)
        self.assertEqual(
            _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR, NO_TSTATE), 0)
        self.assertEqual(domain_size(DOMAIN), 0)
        self.assertTotalsAgree(traced_totals())

    def test_track_without_tstate_when_only_sub_traces(self):
        self.run_in(self.sub, "tracemalloc.start()")
        result = self.run_in(self.sub, """
            result = (_testinternalcapi.tracemalloc_track_rc(
                          DOMAIN, PTR, SIZE, NO_TSTATE),
                      domain_size(DOMAIN))
            """)
        self.assertEqual(result, (NOT_TRACING, 0))

    def test_without_tstate_when_nobody_traces(self):
        self.assertEqual(
            _testinternalcapi.tracemalloc_track_rc(DOMAIN, PTR, SIZE,
                                                   NO_TSTATE),
            NOT_TRACING)
        self.assertEqual(
            _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR, NO_TSTATE),
            NOT_TRACING)

    def test_track_already_tracked_in_other_interpreter(self):
        # the sub tracks a block main tracked (its old owner freed it
        # without telling): both traces are dropped by one untrack each
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        self.assertEqual(
            _testinternalcapi.tracemalloc_track_rc(DOMAIN, PTR, SIZE), 0)
        self.assertEqual(self.sub_track(), 0)
        self.assertEqual(domain_size(DOMAIN), SIZE)
        self.assertEqual(self.run_in(self.sub, "result = domain_size(DOMAIN)"),
                         SIZE)
        self.assertEqual(
            _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR), 0)
        self.assertEqual(domain_size(DOMAIN), 0)
        self.assertEqual(self.run_in(self.sub, "result = domain_size(DOMAIN)"),
                         SIZE)
        self.assertEqual(
            _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR), 0)
        self.assertEqual(self.run_in(self.sub, "result = domain_size(DOMAIN)"),
                         0)


class TestCAPIIsolated(CAPITests, SubinterpreterTestCase):
    config = 'isolated'


class TestCAPILegacy(CAPITests, SubinterpreterTestCase):
    config = 'legacy'

    @unittest.skipIf(support.Py_GIL_DISABLED,
                     "the free-threaded build loads no single-phase init "
                     "module in a subinterpreter")
    def test_testcapi_helpers_in_legacy_sub(self):
        # _testcapi is a single-phase init module: legacy subs only
        result = self.run_in(self.sub, """
            import _testcapi
            results = []
            for release_gil in (False, True):
                try:
                    _testcapi.tracemalloc_track(DOMAIN, PTR, SIZE, release_gil)
                except RuntimeError:
                    results.append('not tracing')
            tracemalloc.start()
            for release_gil in (False, True):
                _testcapi.tracemalloc_track(DOMAIN, PTR, SIZE, release_gil)
                results.append(domain_size(DOMAIN))
                _testcapi.tracemalloc_untrack(DOMAIN, PTR, release_gil)
                results.append(domain_size(DOMAIN))
            result = results
            """)
        self.assertEqual(result, ['not tracing', 'not tracing',
                                  SIZE, 0, SIZE, 0])


# --- Objects reused from a free list -----------------------------------------

class FreeListTests:

    EXPECTED = [(('<freelist>', 6),), (('<freelist>', 7),),
                (('<freelist>', 8),), (('<freelist>', 9),)]

    def test_reused_objects_get_traceback_in_sub(self):
        self.run_in(self.sub, "tracemalloc.start()")
        result = self.run_in(self.sub, "result = freelist_tracebacks()")
        self.assertEqual(result, self.EXPECTED)
        self.assertEqual(freelist_tracebacks(), [None] * 4)

    def test_reused_objects_get_traceback_in_main(self):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")
        self.assertEqual(freelist_tracebacks(), self.EXPECTED)
        self.assertEqual(self.run_in(self.sub, "result = traced_size('<freelist>')"),
                         0)

    def test_reused_objects_in_untraced_sub(self):
        tracemalloc.start()
        result = self.run_in(self.sub, "result = freelist_tracebacks()")
        self.assertEqual(result, [None] * 4)
        self.assertEqual(traced_size('<freelist>'), 0)


class TestFreeListIsolated(FreeListTests, SubinterpreterTestCase):
    config = 'isolated'


class TestFreeListLegacy(FreeListTests, SubinterpreterTestCase):
    config = 'legacy'


# --- Threads -----------------------------------------------------------------

@threading_helper.requires_working_threading()
class ThreadsTests:

    def expected_size(self):
        return NTHREADS * sum(sys.getsizeof(b'') + 1000 + i
                              for i in range(NBLOCKS))

    def test_threads_in_main_and_sub(self):
        tracemalloc.start()
        self.run_in(self.sub, "tracemalloc.start()")

        # main's threads and the sub's threads run at the same time
        sub_results = []
        def run_sub():
            sub_results.append(self.run_in(self.sub, """
                kept = run_threads('<sub-thread>')
                snapshot = tracemalloc.take_snapshot()
                result = (traced_size('<sub-thread>', snapshot),
                          traced_size('<main-thread>', snapshot))
                """))
        sub_thread = threading.Thread(target=run_sub)
        sub_thread.start()
        try:
            kept = run_threads('<main-thread>')
        finally:
            sub_thread.join()

        self.assertEqual(sub_results, [(self.expected_size(), 0)])
        snapshot = tracemalloc.take_snapshot()
        self.assertEqual(traced_size('<main-thread>', snapshot),
                         self.expected_size())
        self.assertEqual(traced_size('<sub-thread>', snapshot), 0)
        self.assertTotalsAgree(traced_totals())
        self.assertTotalsAgree(self.run_in(self.sub,
                                           "result = traced_totals()"))
        del kept

    def test_threads_in_two_subs(self):
        other = self.new_interp()
        for interp in (self.sub, other):
            self.run_in(interp, "tracemalloc.start()")
        results = {}
        def run(interp, name):
            results[name] = self.run_in(interp, f"""
                kept = run_threads('<{name}>')
                result = (traced_size('<{name}>'),
                          traced_size('<sub>') + traced_size('<other>'),
                          traced_totals())
                """)
        threads = [threading.Thread(target=run, args=(self.sub, 'sub')),
                   threading.Thread(target=run, args=(other, 'other'))]
        with threading_helper.start_threads(threads):
            pass
        expected = self.expected_size()
        for name in ('sub', 'other'):
            with self.subTest(name=name):
                own, both, totals = results[name]
                self.assertEqual(own, expected)
                self.assertEqual(both, expected)
                self.assertTotalsAgree(totals)
        self.assertFalse(tracemalloc.is_tracing())


class TestThreadsIsolated(ThreadsTests, SubinterpreterTestCase):
    config = 'isolated'


class TestThreadsLegacy(ThreadsTests, SubinterpreterTestCase):
    config = 'legacy'


# --- Lifecycle (in a child process) ------------------------------------------

class MainTracesTestCase(unittest.TestCase):
    """The test starts tracemalloc in the main interpreter, which must not
    trace before; it is stopped after."""

    def setUp(self):
        if tracemalloc.is_tracing():
            self.skipTest('tracemalloc must be stopped before the test')
        self.addCleanup(tracemalloc.clear_leftovers)
        self.addCleanup(tracemalloc.stop)


class TestStartStopConcurrently(MainTracesTestCase):
    """stop() is one step for everyone: its interpreter leaves the tracing
    interpreters and drops its traces at once.  (The threads run at once
    only without a GIL; in turn otherwise.)"""

    @threading_helper.requires_working_threading()
    def test_untrack_without_tstate_while_stopping(self):
        # An untrack with the GIL released that sees main gone from the
        # tracing interpreters must not leave main's trace visible after.
        def untrack_all():
            left = 0
            for i in range(5000):
                ptr = PTR + 16 * (i % 64)
                if _testinternalcapi.tracemalloc_track_rc(
                        DOMAIN, ptr, 1, ATTACHED) != 0:
                    continue
                _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, ptr, DETACHED)
                if _testinternalcapi._PyTraceMalloc_GetTraceback(
                        DOMAIN, ptr) is not None:
                    left += 1
            return left

        self.assertEqual(start_and_stop_meanwhile(untrack_all), 0)


class TestThreadsFromOutside(MainTracesTestCase):
    """A thread from outside the interpreter (here a bare C thread) waits
    for the interpreter's tables while one of its own threads holds them, for
    as long as a snapshot of many traces takes."""

    @threading_helper.requires_working_threading()
    def test_track_without_tstate_while_snapshots_are_taken(self):
        tracemalloc.start()
        data = [bytes(100) for _ in range(100_000)]
        stop = threading.Event()

        def take_snapshots():
            while not stop.is_set():
                tracemalloc.take_snapshot()

        thread = threading.Thread(target=take_snapshots)
        thread.start()
        try:
            for i in range(200):
                ptr = PTR + 16 * i
                self.assertEqual(_testinternalcapi.tracemalloc_track_rc(
                    DOMAIN, ptr, SIZE, NO_TSTATE), 0)
                self.assertEqual(
                    _testinternalcapi._PyTraceMalloc_GetTraceback(DOMAIN, ptr),
                    (('<unknown>', 0),))
                if i % 2:
                    self.assertEqual(_testinternalcapi.tracemalloc_untrack_rc(
                        DOMAIN, ptr, NO_TSTATE), 0)
        finally:
            stop.set()
            thread.join()
        self.assertEqual(domain_size(DOMAIN), 100 * SIZE)
        traced, total = traced_totals()
        self.assertEqual(traced, total)
        del data


class TestLifecycle(unittest.TestCase):

    def run_child(self, source):
        script = child_script(source)
        with support.SuppressCrashReport():
            script_helper.assert_python_ok('-c', script)

    def test_destroy_tracing_sub_keeps_main_tracing(self):
        self.run_child("""
            tracemalloc.start(3)
            data = alloc_from('<main-alloc>', BIG)
            for config in ('isolated', 'legacy', 'isolated', 'legacy'):
                sub = _interpreters.create(config)
                run_in(sub, PRELUDE)
                run_in(sub, '''
                    tracemalloc.start(2)
                    data = [alloc_from('<sub-alloc>', BIG)]
                    data += [alloc_from('<sub-alloc>', 100) for _ in range(100)]
                    _testinternalcapi.tracemalloc_track_rc(DOMAIN, PTR, SIZE)
                    ''')
                _interpreters.destroy(sub)

                assert tracemalloc.is_tracing()
                assert tracemalloc.get_traceback_limit() == 3
                frames = frames_of(tracemalloc.get_object_traceback(data))
                assert len(frames) == 3, (config, frames)
                assert frames[-1] == ('<main-alloc>', 1), (config, frames)
                snapshot = tracemalloc.take_snapshot()
                assert traced_size('<main-alloc>', snapshot) \\
                    == sys.getsizeof(data), config
                assert traced_size('<sub-alloc>', snapshot) == 0, config
                traced, total = traced_totals()
                assert traced == total, (traced, total)
                # the destroyed sub's block is nobody's now
                assert _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, PTR) == 0

            data2 = alloc_from('<main-alloc2>', BIG)
            assert traced_size('<main-alloc2>') == sys.getsizeof(data2)
            tracemalloc.stop()
            """)

    def test_destroy_tracing_sub_while_main_does_not_trace(self):
        self.run_child("""
            for config in ('isolated', 'legacy'):
                sub = _interpreters.create(config)
                run_in(sub, PRELUDE)
                run_in(sub, '''
                    tracemalloc.start()
                    data = alloc_from('<sub-alloc>', BIG)
                    assert _testinternalcapi.tracemalloc_track_rc(
                        DOMAIN, PTR, SIZE) == 0
                    ''')
                _interpreters.destroy(sub)

                # the sub's block is its leftover: untracked from there,
                # it is nobody's
                assert _testinternalcapi.tracemalloc_untrack_rc(
                    DOMAIN, PTR) == 0
                assert _testinternalcapi.tracemalloc_untrack_rc(
                    DOMAIN, PTR) == -2
                assert _testinternalcapi.tracemalloc_untrack_rc(
                    DOMAIN, PTR, 2) == -2
                assert not tracemalloc.is_tracing()
                tracemalloc.start()
                data = alloc_from('<main-alloc>', BIG)
                snapshot = tracemalloc.take_snapshot()
                assert traced_size('<main-alloc>', snapshot) \\
                    == sys.getsizeof(data)
                assert traced_size('<sub-alloc>', snapshot) == 0
                tracemalloc.stop()
            """)

    def test_stop_and_start_in_main_while_sub_allocates(self):
        self.run_child("""
            import threading
            for config in ('isolated', 'legacy'):
                sub = _interpreters.create(config)
                run_in(sub, PRELUDE)
                run_in(sub, "tracemalloc.start()")
                results = []
                def run():
                    results.append(run_in(sub, '''
                        kept = []
                        for i in range(2000):
                            kept.append(alloc_from('<sub-alloc>', 100 + i % 7))
                            if len(kept) > 50:
                                del kept[:25]
                        result = (traced_size('<sub-alloc>')
                                  == sum(map(sys.getsizeof, kept)),
                                  traced_totals())
                        '''))
                thread = threading.Thread(target=run)
                thread.start()
                for _ in range(50):
                    tracemalloc.start()
                    alloc_from('<main-alloc>', 1000)
                    tracemalloc.stop()
                thread.join()
                (sizes_agree, (traced, total)), = results
                assert sizes_agree
                assert traced == total, (traced, total)
                assert run_in(sub, "result = tracemalloc.is_tracing()")
                _interpreters.destroy(sub)
            """)

    def test_snapshots_clears_and_restarts_while_threads_allocate(self):
        # threads of the sub allocate while the sub's main thread takes
        # snapshots, clears its traces and restarts, and a thread of main
        # does the same with main's state
        self.run_child("""
            for config in ('isolated', 'legacy'):
                sub = _interpreters.create(config)
                run_in(sub, PRELUDE)
                run_in(sub, '''
                    tracemalloc.start(3)
                    stop = threading.Event()
                    def work():
                        kept = []
                        while not stop.is_set():
                            kept.append(alloc_from('<sub-thread>', 500))
                            if len(kept) > 200:
                                del kept[:100]
                    threads = [threading.Thread(target=work) for _ in range(2)]
                    for thread in threads:
                        thread.start()
                    ''')
                def main_work():
                    for i in range(30):
                        tracemalloc.start(2)
                        data = [alloc_from('<main-alloc>', 100) for _ in range(50)]
                        tracemalloc.take_snapshot()
                        tracemalloc.clear_traces()
                        tracemalloc.stop()
                main_thread = threading.Thread(target=main_work)
                main_thread.start()
                traced, total = run_in(sub, '''
                    try:
                        for i in range(30):
                            tracemalloc.take_snapshot()
                            tracemalloc.clear_traces()
                            if i % 5 == 0:
                                tracemalloc.stop()
                                tracemalloc.start(1 + i % 4)
                    finally:
                        stop.set()
                        for thread in threads:
                            thread.join()
                    result = traced_totals()
                    ''')
                main_thread.join()
                assert traced == total, (config, traced, total)
                _interpreters.destroy(sub)
            """)

    def test_create_and_destroy_subs_while_main_traces(self):
        self.run_child("""
            tracemalloc.start()
            data = alloc_from('<main-alloc>', BIG)
            for i in range(8):
                sub = _interpreters.create(('isolated', 'legacy')[i % 2])
                run_in(sub, PRELUDE)
                run_in(sub, '''
                    if tracing:
                        tracemalloc.start()
                    data = [alloc_from('<sub-alloc>', 1000) for _ in range(10)]
                    ''', tracing=bool(i % 3))
                if i % 4 == 3:
                    run_in(sub, "tracemalloc.stop()")
                _interpreters.destroy(sub)
                assert tracemalloc.is_tracing()
                traced, total = traced_totals()
                assert traced == total, (i, traced, total)
            snapshot = tracemalloc.take_snapshot()
            assert traced_size('<sub-alloc>', snapshot) == 0
            assert traced_size('<main-alloc>', snapshot) == sys.getsizeof(data)
            """)

    def test_exit_with_live_tracing_subinterpreters(self):
        for main_traces in (False, True):
            with self.subTest(main_traces=main_traces):
                self.run_child(f"""
                    if {main_traces}:
                        tracemalloc.start()
                        data = alloc_from('<main-alloc>', BIG)
                    subs = []
                    for config in ('isolated', 'legacy'):
                        sub = _interpreters.create(config)
                        run_in(sub, PRELUDE)
                        run_in(sub, '''
                            tracemalloc.start(5)
                            data = [alloc_from('<sub-alloc>', BIG)]
                            _testinternalcapi.tracemalloc_track_rc(
                                DOMAIN, PTR, SIZE)
                            ''')
                        subs.append(sub)
                    # exit without destroying them
                    """)

    def test_exit_after_sub_thread_allocated(self):
        # A thread of a tracing sub allocates while main traces, allocates,
        # stops and exits with the sub alive.  The thread is joined before
        # exiting: finalizing a sub whose thread still runs can fail an
        # assertion in tstate_activate() in 3.13 itself, tracing or not.
        self.run_child("""
            tracemalloc.start()
            sub = _interpreters.create('isolated')
            run_in(sub, PRELUDE)
            run_in(sub, '''
                tracemalloc.start()
                def work():
                    kept = []
                    for i in range(3000):
                        kept.append(alloc_from('<sub-alloc>', 1000))
                        if len(kept) > 100:
                            del kept[:50]
                thread = threading.Thread(target=work)
                thread.start()
                ''')
            data = [alloc_from('<main-alloc>', 1000) for _ in range(1000)]
            tracemalloc.stop()
            run_in(sub, "thread.join()")
            """)


# --- -X tracemalloc and PYTHONTRACEMALLOC ------------------------------------

CMDLINE_CODE = """
results = {'main': (tracemalloc.is_tracing(),
                    tracemalloc.get_traceback_limit())}
main_data = alloc_from('<main-alloc>', BIG)
for config in ('isolated', 'legacy'):
    sub = _interpreters.create(config)
    run_in(sub, PRELUDE)
    results[config] = run_in(sub, '''
        tracing = tracemalloc.is_tracing()
        limit = tracemalloc.get_traceback_limit()
        if tracing:
            data = alloc_from('<sub-alloc>', BIG)
            snapshot = tracemalloc.take_snapshot()
            own = traced_size('<sub-alloc>', snapshot) == sys.getsizeof(data)
            other = traced_size('<main-alloc>', snapshot)
        else:
            own = other = None
        result = (tracing, limit, own, other)
        ''')
    _interpreters.destroy(sub)
if tracemalloc.is_tracing():
    snapshot = tracemalloc.take_snapshot()
    results['main'] += (
        traced_size('<main-alloc>', snapshot) == sys.getsizeof(main_data),
        traced_size('<sub-alloc>', snapshot))
print(repr(results))
"""


class TestCommandLine(unittest.TestCase):

    def run_child(self, *args, **env_vars):
        ok, stdout, stderr = script_helper.assert_python_ok(
            *args, '-c', child_script(CMDLINE_CODE), **env_vars)
        return ast.literal_eval(stdout.decode().strip())

    def expected(self, nframe):
        sub = (True, nframe, True, 0)
        return {'main': (True, nframe, True, 0),
                'isolated': sub, 'legacy': sub}

    def not_tracing(self):
        sub = (False, 1, None, None)
        return {'main': (False, 1), 'isolated': sub, 'legacy': sub}

    def test_xoption_traces_every_interpreter(self):
        for xoption, nframe in (('tracemalloc', 1),
                                ('tracemalloc=1', 1),
                                ('tracemalloc=7', 7)):
            with self.subTest(xoption=xoption):
                self.assertEqual(self.run_child('-X', xoption),
                                 self.expected(nframe))

    def test_env_var_traces_every_interpreter(self):
        for value, nframe in (('1', 1), ('7', 7)):
            with self.subTest(PYTHONTRACEMALLOC=value):
                self.assertEqual(self.run_child(PYTHONTRACEMALLOC=value),
                                 self.expected(nframe))

    def test_zero_traces_no_interpreter(self):
        with self.subTest(xoption='tracemalloc=0'):
            self.assertEqual(self.run_child('-X', 'tracemalloc=0'),
                             self.not_tracing())
        with self.subTest(PYTHONTRACEMALLOC='0'):
            self.assertEqual(self.run_child(PYTHONTRACEMALLOC='0'),
                             self.not_tracing())

    def test_stop_in_sub_under_xoption(self):
        code = child_script("""
            sub = _interpreters.create()
            run_in(sub, PRELUDE)
            assert run_in(sub, '''
                tracemalloc.stop()
                result = tracemalloc.is_tracing()
                ''') is False
            assert tracemalloc.is_tracing()
            data = alloc_from('<main-alloc>', BIG)
            assert traced_size('<main-alloc>') == sys.getsizeof(data)
            _interpreters.destroy(sub)
            """)
        script_helper.assert_python_ok('-X', 'tracemalloc', '-c', code)

    # The messages upstream's TestCommandLine accepts.
    RANGE_ERROR = b'ValueError: the number of frames must be in range'

    def check_invalid(self, message, *args, **env_vars):
        with support.SuppressCrashReport():
            ok, stdout, stderr = script_helper.assert_python_failure(
                *args, '-c', 'pass', **env_vars)
        self.assertIn(message, stderr)

    @support.force_not_colorized
    def test_xoption_invalid(self):
        for value, message in (
            ('-1', b'-X tracemalloc=NFRAME: invalid number of frames'),
            ('abc', b'-X tracemalloc=NFRAME: invalid number of frames'),
            ('65536', self.RANGE_ERROR),
        ):
            with self.subTest(value=value):
                self.check_invalid(message, '-X', f'tracemalloc={value}')

    @support.force_not_colorized
    def test_env_var_invalid(self):
        for value, message in (
            ('-1', b'PYTHONTRACEMALLOC: invalid number of frames'),
            ('abc', b'PYTHONTRACEMALLOC: invalid number of frames'),
            ('65536', self.RANGE_ERROR),
        ):
            with self.subTest(value=value):
                self.check_invalid(message, PYTHONTRACEMALLOC=value)


if __name__ == "__main__":
    unittest.main()
