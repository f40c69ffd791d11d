"""Tests for what tracemalloc's allocator hooks do around a free.

- An interpreter that does not trace frees its blocks without asking the
  ones that do (the owner map of Python/tracemalloc.c).
- A realloc() that fails leaves the trace of its block as it was.
- Over PyMem's debug hooks (-X dev), a damaged block is reported with the
  traceback where it was allocated.
- PyTraceMalloc_Track() takes any address, the highest one included.
- In the default build, the lock of an interpreter's tables is biased
  towards the thread holding its GIL, and threads from outside revoke it.
- fork() while another thread holds a lock of tracemalloc.
- The reference tracer (PyRefTracer_SetTracer()) stays the user's.
"""

import os
import struct
import textwrap
import tracemalloc
import unittest
from test import support
from test.support import import_helper
from test.support import script_helper
from test.test_tracemalloc_interpreters import traced_totals

_interpreters = import_helper.import_module('_interpreters')
_testinternalcapi = import_helper.import_module('_testinternalcapi')

DOMAIN = 7
HIGHEST = 2 ** (8 * struct.calcsize('P')) - 1


def run_in(interp, source):
    """Run source in interp; raise RuntimeError if it fails."""
    excinfo = _interpreters.exec(interp, textwrap.dedent(source))
    if excinfo is not None:
        raise RuntimeError(excinfo.errdisplay)


def new_interp(testcase, config):
    interp = _interpreters.create(config)
    testcase.addCleanup(_interpreters.destroy, interp)
    return interp


def frames_of(traceback):
    if traceback is None:
        return None
    return [(frame.filename, frame.lineno) for frame in traceback]


# A workload of small objects, allocated and freed many times over.
CHURN = """
    for _ in range(20):
        data = [{'key': i, 'value': str(i)} for i in range(5000)]
        del data
"""


class TracingMainTestCase(unittest.TestCase):

    def setUp(self):
        if tracemalloc.is_tracing():
            self.skipTest("tracemalloc must be stopped before the test")
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)


def interpreters_share_heap():
    """Do the interpreters' objects come from one heap?  With pymalloc and
    mimalloc, each isolated interpreter has its own arenas or pages; with
    plain malloc (an ASan build), they mix in the same regions."""
    name = _testinternalcapi.pymem_getallocatorsname()
    return not name.startswith(('pymalloc', 'mimalloc'))


class TestFreesOfOtherInterpreters(TracingMainTestCase):
    """The frees of an interpreter that does not trace, while another does,
    seldom ask the tracing interpreters about their blocks."""

    def lookups_elsewhere_during(self, interp, source):
        before = _testinternalcapi.tracemalloc_lookups_elsewhere()
        run_in(interp, source)
        return _testinternalcapi.tracemalloc_lookups_elsewhere() - before

    def check_frees_stay_home(self, config):
        sub = new_interp(self, config)
        # 20 * 5000 dicts and strings, each freed once: a lookup per free
        # would count about 200,000.  A few blocks may share a region of
        # address space with those of main.
        lookups = self.lookups_elsewhere_during(sub, CHURN)
        self.assertLess(lookups, 2000)

    @unittest.skipIf(interpreters_share_heap(),
                     "the interpreters' blocks share regions of memory")
    def test_isolated_sub_that_does_not_trace(self):
        self.check_frees_stay_home('isolated')

    def test_sub_that_traces_too(self):
        sub = new_interp(self, 'isolated')
        run_in(sub, "import tracemalloc; tracemalloc.start()")
        lookups = self.lookups_elsewhere_during(sub, CHURN)
        self.assertLess(lookups, 2000)

    def test_main_block_freed_by_sub_is_untraced(self):
        # The lock-free check must not lose a free of a block that another
        # interpreter traces.
        ptr = _testinternalcapi.tracemalloc_raw_malloc(1000)
        get_traceback = _testinternalcapi._PyTraceMalloc_GetTraceback
        self.assertIsNotNone(get_traceback(0, ptr))
        sub = new_interp(self, 'isolated')
        run_in(sub, f"""
            import _testinternalcapi
            _testinternalcapi.tracemalloc_raw_free({ptr})
            """)
        self.assertIsNone(get_traceback(0, ptr))
        traced, total = traced_totals()
        self.assertEqual(traced, total)

    def test_main_block_resized_by_sub_is_untraced(self):
        # The block leaves main: the sub that resized it does not trace.
        ptr = _testinternalcapi.tracemalloc_raw_malloc(1000)
        get_traceback = _testinternalcapi._PyTraceMalloc_GetTraceback
        self.assertIsNotNone(get_traceback(0, ptr))
        sub = new_interp(self, 'isolated')
        r, w = os.pipe()
        self.addCleanup(os.close, r)
        run_in(sub, f"""
            import os, _testinternalcapi
            ptr = _testinternalcapi.tracemalloc_raw_realloc({ptr}, 100_000)
            os.write({w}, str(ptr).encode())
            os.close({w})
            """)
        new_ptr = int(os.read(r, 100))
        self.assertNotEqual(new_ptr, 0)
        self.addCleanup(_testinternalcapi.tracemalloc_raw_free, new_ptr)
        self.assertIsNone(get_traceback(0, ptr))
        self.assertIsNone(get_traceback(0, new_ptr))
        traced, total = traced_totals()
        self.assertEqual(traced, total)

    def test_tracked_block_untracked_by_sub(self):
        ptr = 0x5eed0000
        self.assertEqual(
            _testinternalcapi.tracemalloc_track_rc(DOMAIN, ptr, 10), 0)
        sub = new_interp(self, 'isolated')
        run_in(sub, f"""
            import _testinternalcapi
            rc = _testinternalcapi.tracemalloc_untrack_rc({DOMAIN}, {ptr})
            assert rc == 0, rc
            """)
        self.assertIsNone(
            _testinternalcapi._PyTraceMalloc_GetTraceback(DOMAIN, ptr))


class TestFailedRealloc(TracingMainTestCase):

    def test_failed_resize_keeps_traceback(self):
        data = bytearray(100_000)
        expected = frames_of(tracemalloc.get_object_traceback(data))
        ptr_size = 100_001   # the buffer of the bytearray, with its NUL
        def buffer_frames():
            snapshot = tracemalloc.take_snapshot()
            return [frames_of(trace.traceback) for trace in snapshot.traces
                    if trace.size == ptr_size]
        before = buffer_frames()
        self.assertEqual(len(before), 1)
        with self.assertRaises(MemoryError):
            data *= 2 ** 46
        self.assertEqual(buffer_frames(), before)
        self.assertEqual(frames_of(tracemalloc.get_object_traceback(data)),
                         expected)

    def test_failed_realloc_of_raw_block_by_another_interpreter(self):
        sub = new_interp(self, 'isolated')
        ptr = _testinternalcapi.tracemalloc_raw_malloc(1000)
        self.addCleanup(_testinternalcapi.tracemalloc_raw_free, ptr)
        get_traceback = _testinternalcapi._PyTraceMalloc_GetTraceback
        expected = get_traceback(0, ptr)
        self.assertIsNotNone(expected)
        run_in(sub, f"""
            import _testinternalcapi
            assert _testinternalcapi.tracemalloc_raw_realloc(
                {ptr}, 2 ** 62) == 0
            """)
        self.assertEqual(get_traceback(0, ptr), expected)
        traced, total = traced_totals()
        self.assertEqual(traced, total)

    def test_failed_realloc_after_clear_traces_is_not_traced(self):
        # The trace it dropped belongs to tables that are gone.
        ptr = _testinternalcapi.tracemalloc_raw_malloc(1000)
        self.addCleanup(_testinternalcapi.tracemalloc_raw_free, ptr)
        sub = new_interp(self, 'isolated')
        tracemalloc.clear_traces()
        ptr2 = _testinternalcapi.tracemalloc_raw_malloc(1000)
        self.addCleanup(_testinternalcapi.tracemalloc_raw_free, ptr2)
        run_in(sub, f"""
            import _testinternalcapi
            assert _testinternalcapi.tracemalloc_raw_realloc(
                {ptr}, 2 ** 62) == 0
            """)
        get_traceback = _testinternalcapi._PyTraceMalloc_GetTraceback
        self.assertIsNone(get_traceback(0, ptr))
        self.assertIsNotNone(get_traceback(0, ptr2))


class TestDebugHooks(unittest.TestCase):
    """-X dev installs PyMem's debug hooks, which report a damaged block
    with the traceback tracemalloc has for it."""

    def check_reported(self, code):
        code = textwrap.dedent(code)
        with support.SuppressCrashReport():
            out = script_helper.assert_python_failure(
                '-X', 'dev', '-X', 'tracemalloc=5', '-c', code)
        stderr = out.err.decode('ascii', 'replace')
        self.assertIn('Memory block allocated at (most recent call first):\n'
                      '  File "<string>", line 4\n', stderr)

    def test_free_of_damaged_block(self):
        self.check_reported("""
            import _testcapi

            _testcapi.pymem_buffer_overflow()
            """)

    def test_realloc_of_damaged_block(self):
        import_helper.import_module('ctypes')
        self.check_reported("""
            import ctypes, _testinternalcapi as t

            ptr = t.tracemalloc_raw_malloc(16)
            ctypes.memset(ptr + 16, 0x58, 1)
            t.tracemalloc_raw_realloc(ptr, 1000)
            """)


class TestHighestAddress(TracingMainTestCase):

    def track(self, ptr, size):
        rc = _testinternalcapi.tracemalloc_track_rc(DOMAIN, ptr, size)
        self.assertEqual(rc, 0)

    def domain_sizes(self):
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, DOMAIN)])
        return sorted(trace.size for trace in snapshot.traces)

    def test_highest_address_is_tracked(self):
        for i in range(2000):
            self.track(0x5eed0000 + 4096 * i + 8, 10)
        self.track(HIGHEST, 77)
        get_traceback = _testinternalcapi._PyTraceMalloc_GetTraceback
        self.assertIsNotNone(get_traceback(DOMAIN, HIGHEST))
        self.assertEqual(self.domain_sizes(), [10] * 2000 + [77])

        self.track(HIGHEST, 78)     # tracked again: replaced
        self.assertEqual(self.domain_sizes(), [10] * 2000 + [78])

        rc = _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, HIGHEST)
        self.assertEqual(rc, 0)
        self.assertIsNone(get_traceback(DOMAIN, HIGHEST))
        self.assertEqual(self.domain_sizes(), [10] * 2000)

    def test_highest_address_in_default_domain(self):
        get_traceback = _testinternalcapi._PyTraceMalloc_GetTraceback
        rc = _testinternalcapi.tracemalloc_track_rc(0, HIGHEST, 5)
        self.assertEqual(rc, 0)
        self.assertIsNotNone(get_traceback(0, HIGHEST))
        rc = _testinternalcapi.tracemalloc_untrack_rc(0, HIGHEST)
        self.assertEqual(rc, 0)
        self.assertIsNone(get_traceback(0, HIGHEST))


class TestBiasedLock(TracingMainTestCase):
    """The lock of the main interpreter's tables is biased towards the
    thread that holds the GIL while nobody from outside takes it."""

    def setUp(self):
        if _testinternalcapi.tracemalloc_lock_biased() is None:
            self.skipTest("the lock is never biased in this build")
        super().setUp()

    def bias(self):
        # Many more critical sections than the owner needs to bias it
        for _ in range(4):
            data = [str(i) for i in range(20_000)]
            del data
        return _testinternalcapi.tracemalloc_lock_biased()

    def test_lock_is_biased_while_nobody_else_takes_it(self):
        self.assertTrue(self.bias())

    def test_untrack_from_c_thread_revokes_bias(self):
        ptr = 0x5eed0000
        get_traceback = _testinternalcapi._PyTraceMalloc_GetTraceback
        rc = _testinternalcapi.tracemalloc_track_rc(DOMAIN, ptr, 10)
        self.assertEqual(rc, 0)
        self.assertTrue(self.bias())
        # A bare C thread, with no thread state, is an outsider.
        rc = _testinternalcapi.tracemalloc_untrack_rc(DOMAIN, ptr, 2)
        self.assertEqual(rc, 0)
        self.assertFalse(_testinternalcapi.tracemalloc_lock_biased())
        self.assertIsNone(get_traceback(DOMAIN, ptr))
        # ... and the owner biases it again once left alone.
        self.assertTrue(self.bias())

    def test_free_by_sub_revokes_bias(self):
        ptr = _testinternalcapi.tracemalloc_raw_malloc(1000)
        self.assertTrue(self.bias())
        sub = new_interp(self, 'isolated')
        run_in(sub, f"""
            import _testinternalcapi
            _testinternalcapi.tracemalloc_raw_free({ptr})
            """)
        self.assertFalse(_testinternalcapi.tracemalloc_lock_biased())
        get_traceback = _testinternalcapi._PyTraceMalloc_GetTraceback
        self.assertIsNone(get_traceback(0, ptr))
        traced, total = traced_totals()
        self.assertEqual(traced, total)


@support.requires_fork()
class TestFork(unittest.TestCase):
    """A thread holds tracemalloc's registry lock while another forks: the
    child must be able to use tracemalloc."""

    def test_fork_while_registry_is_locked(self):
        code = textwrap.dedent("""
            import os, tracemalloc, _testinternalcapi
            from test import support

            tracemalloc.start(3)
            _testinternalcapi.tracemalloc_hold_registry(0.5)
            pid = os.fork()
            if pid == 0:
                data = [bytes(100) for _ in range(100)]
                snapshot = tracemalloc.take_snapshot()
                assert snapshot.traces, "no traces in the child"
                tracemalloc.stop()
                tracemalloc.start(2)
                assert tracemalloc.get_traceback_limit() == 2
                os._exit(0)
            support.wait_process(pid, exitcode=0, timeout=60)
            """)
        script_helper.assert_python_ok('-c', code)


class TestReferenceTracer(unittest.TestCase):
    """tracemalloc is told of each object created without going through
    the reference tracer: a tracer set with PyRefTracer_SetTracer() sees
    every event while tracemalloc starts, traces and stops."""

    def run_with_printer(self, body):
        """Run body in a new interpreter process with _testcapi's tracer
        printing every event; return the lines printed."""
        import_helper.import_module('_testcapi')
        code = ("import _testcapi, tracemalloc\n"
                "_testcapi.toggle_reftrace_printer(True)\n"
                + textwrap.dedent(body) +
                "_testcapi.toggle_reftrace_printer(False)\n")
        _, out, _ = script_helper.assert_python_ok('-c', code)
        return out.decode().splitlines()

    def test_tracer_sees_objects_created_while_tracing(self):
        lines = self.run_with_printer("""
            class WhileTracing: pass
            tracemalloc.start()
            obj = WhileTracing()
            del obj
            """)
        self.assertIn('CREATE WhileTracing', lines)
        self.assertIn('DESTROY WhileTracing', lines)

    def test_tracer_stays_after_stop(self):
        lines = self.run_with_printer("""
            class AfterStop: pass
            tracemalloc.start()
            tracemalloc.stop()
            obj = AfterStop()
            """)
        self.assertIn('CREATE AfterStop', lines)

    def test_object_from_free_list_retraced_under_a_tracer(self):
        self.run_with_printer("""
            import gc, sys
            tracemalloc.start()
            gc.collect()  # empties the free lists
            def new_list():
                return []
            obj = new_list()
            del obj  # to the free list of lists
            reused = []; line = sys._getframe().f_lineno
            traceback = tracemalloc.get_object_traceback(reused)
            assert traceback is not None, "not traced"
            assert traceback[0].lineno == line, traceback
            """)


if __name__ == '__main__':
    unittest.main()
