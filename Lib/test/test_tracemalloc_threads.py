"""Tests for several threads of one interpreter tracing at once.

The free-threaded build splits an interpreter's traces into stripes, each
with its own lock, table and capture cache, so that its threads do not
contend: a block is traced in the stripe of its segment (32 MiB of address
space), which is the stripe of the thread that first traced a block there.
What the threads see of their traces is the same in every build; the tests
of the stripes themselves need several.

The blocks are made up: addresses tracked with PyTraceMalloc_Track(), far
above the heap, with a size that no real block of these tests has.
"""

import gc
import threading
import tracemalloc
import unittest
from test import support
from test.support import import_helper
from test.support import threading_helper

_testinternalcapi = import_helper.import_module('_testinternalcapi')
threading_helper.requires_working_threading(module=True)

KiB = 1024
MiB = 1024 * KiB
SEGMENT = 32 * MiB                  # as in Python/tracemalloc.c
FLUSH = 64 * KiB                    # likewise
FAR = 0x3000_0000_0000              # 48 TiB: no heap there
SIZE = 777_777                      # of no real block here
DOMAIN = 11

has_stripes = support.Py_GIL_DISABLED


def track(ptr, size=SIZE, domain=0):
    rc = _testinternalcapi.tracemalloc_track_rc(domain, ptr, size)
    if rc != 0:
        raise AssertionError(f"tracking {ptr:#x} returned {rc}")


def untrack(ptr, domain=0):
    rc = _testinternalcapi.tracemalloc_untrack_rc(domain, ptr)
    if rc != 0:
        raise AssertionError(f"untracking {ptr:#x} returned {rc}")


def traceback_of(ptr, domain=0):
    return _testinternalcapi._PyTraceMalloc_GetTraceback(domain, ptr)


def fresh_segments(n):
    """The first addresses of n segments that no block was traced in yet
    (with a single stripe, every segment has it)."""
    segments = []
    ptr = FAR
    while len(segments) < n:
        if (not has_stripes
                or _testinternalcapi.tracemalloc_stripe_of(ptr) is None):
            segments.append(ptr)
        ptr += SEGMENT
    return segments


def made_up_traces():
    snapshot = tracemalloc.take_snapshot()
    return sorted((trace.domain, trace.size) for trace in snapshot.traces
                  if trace.size in (SIZE, MiB))


def run_threads(*targets):
    """Run each target in a thread of its own, all at once; raise the first
    exception one of them raised."""
    errors = []

    def run(target):
        try:
            target()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(target,))
               for target in targets]
    with threading_helper.start_threads(threads):
        pass
    if errors:
        raise errors[0]


class ThreadsTestCase(unittest.TestCase):

    def setUp(self):
        if tracemalloc.is_tracing():
            self.skipTest("tracemalloc must be stopped before the test")
        tracemalloc.start()
        self.addCleanup(tracemalloc.stop)


class TestThreadsTracing(ThreadsTestCase):

    def test_blocks_of_every_thread_are_traced(self):
        nthreads, nblocks = 4, 500
        segments = fresh_segments(nthreads)

        def tracker(base, domain):
            def run():
                for i in range(nblocks):
                    track(base + 64 * i, domain=domain)
            return run

        run_threads(*(tracker(base, (0, DOMAIN)[i % 2])
                      for i, base in enumerate(segments)))
        expected = sorted([(0, SIZE)] * (2 * nblocks)
                          + [(DOMAIN, SIZE)] * (2 * nblocks))
        self.assertEqual(made_up_traces(), expected)
        for i, base in enumerate(segments):
            domain = (0, DOMAIN)[i % 2]
            self.assertIsNotNone(traceback_of(base + 64, domain))

    def test_thread_untracks_blocks_of_another(self):
        nthreads, nblocks = 4, 500
        segments = fresh_segments(nthreads)
        for base in segments:
            for i in range(nblocks):
                track(base + 64 * i)
        self.assertEqual(len(made_up_traces()), nthreads * nblocks)

        def untracker(base):
            def run():
                for i in range(nblocks):
                    untrack(base + 64 * i)
            return run

        # Each thread untracks the blocks of a segment it never traced in
        run_threads(*(untracker(base) for base in segments))
        self.assertEqual(made_up_traces(), [])
        for base in segments:
            self.assertIsNone(traceback_of(base))

    def test_traced_memory_adds_up_every_thread(self):
        # Each thread traces fewer bytes than a stripe adds to the total at
        # once: get_traced_memory() must count what the stripes hold.
        nthreads, nblocks, size = 4, 60, 1000
        self.assertLess(nblocks * size, FLUSH)
        segments = fresh_segments(nthreads)
        # The main thread reads the total with the threads started, with
        # their blocks traced, and with their blocks untraced.
        barrier = threading.Barrier(nthreads + 1)
        totals = []

        def tracker(base):
            def run():
                barrier.wait()
                barrier.wait()
                for i in range(nblocks):
                    track(base + 64 * i, size=size)
                barrier.wait()
                barrier.wait()
                for i in range(nblocks):
                    untrack(base + 64 * i)
                barrier.wait()
                barrier.wait()
            return run

        def reader():
            def read():
                totals.append(tracemalloc.get_traced_memory()[0])
            barrier.wait()
            read()                  # before
            barrier.wait()
            barrier.wait()
            read()                  # during
            barrier.wait()
            barrier.wait()
            read()                  # after
            barrier.wait()

        gc.collect()
        with support.disable_gc():
            run_threads(reader, *(tracker(base) for base in segments))
        before, during, after = totals
        # The threads allocate a few objects of their own meanwhile
        self.assertAlmostEqual(during - before, nthreads * nblocks * size,
                               delta=32 * KiB)
        self.assertAlmostEqual(after, before, delta=32 * KiB)

    def test_peak_counts_blocks_held_by_threads_at_once(self):
        nthreads = 4
        segments = fresh_segments(nthreads)
        tracemalloc.reset_peak()
        before, _ = tracemalloc.get_traced_memory()
        barrier = threading.Barrier(nthreads)

        def holder(base):
            def run():
                track(base, size=MiB)
                barrier.wait()      # all the blocks are traced at once
                untrack(base)
            return run

        run_threads(*(holder(base) for base in segments))
        _, peak = tracemalloc.get_traced_memory()
        # Each stripe adds a change of FLUSH bytes or more to the total at
        # once: the peak is short by less than FLUSH per other stripe.
        slack = 15 * FLUSH if has_stripes else 0
        self.assertGreaterEqual(peak - before, nthreads * MiB - slack)

    def test_snapshots_and_clears_while_threads_trace(self):
        nthreads, rounds = 3, 200
        segments = fresh_segments(nthreads)
        done = threading.Event()

        def churner(base):
            def run():
                try:
                    for _ in range(rounds):
                        for i in range(20):
                            track(base + 64 * i)
                        # a clear_traces() may have dropped them: the
                        # untracks find nothing then, which is no error
                        for i in range(20):
                            untrack(base + 64 * i)
                finally:
                    done.set()
            return run

        def observer():
            while not done.is_set():
                tracemalloc.take_snapshot()
                tracemalloc.clear_traces()
                tracemalloc.get_traced_memory()

        run_threads(observer, *(churner(base) for base in segments))
        self.assertEqual(made_up_traces(), [])


@unittest.skipUnless(has_stripes, "a build with a single stripe")
class TestStripes(ThreadsTestCase):

    def stripe_of(self, ptr):
        return _testinternalcapi.tracemalloc_stripe_of(ptr)

    def test_threads_trace_into_stripes_of_their_own(self):
        first, second = fresh_segments(2)
        # Two new threads, each tracing first in a segment of its own
        run_threads(lambda: track(first), lambda: track(second))
        self.assertIsNotNone(self.stripe_of(first))
        self.assertIsNotNone(self.stripe_of(second))
        self.assertNotEqual(self.stripe_of(first), self.stripe_of(second))
        untrack(first)
        untrack(second)

    def test_segment_keeps_the_stripe_of_its_first_thread(self):
        base, = fresh_segments(1)
        run_threads(lambda: track(base))
        stripe = self.stripe_of(base)
        # Another thread tracing there uses that stripe, after the first
        # one is gone, and after the block is untracked
        track(base + 64)
        self.assertEqual(self.stripe_of(base + 64), stripe)
        untrack(base)
        untrack(base + 64)
        self.assertEqual(self.stripe_of(base + SEGMENT - 16), stripe)
        self.assertIsNone(traceback_of(base))

    def test_untrack_in_an_untraced_segment_gives_it_no_stripe(self):
        base, = fresh_segments(1)
        untrack(base)
        self.assertIsNone(traceback_of(base))
        self.assertIsNone(self.stripe_of(base))

    def test_stripes_outlive_a_session(self):
        base, = fresh_segments(1)
        track(base)
        stripe = self.stripe_of(base)
        tracemalloc.stop()
        tracemalloc.start()
        self.assertEqual(self.stripe_of(base), stripe)
        self.assertIsNone(traceback_of(base))


if __name__ == "__main__":
    unittest.main()
