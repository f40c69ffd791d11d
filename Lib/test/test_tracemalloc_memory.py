"""Tests for the memory tracemalloc itself uses.

- A session starts small, whatever its traceback limit: its caches and
  buffers grow with what it captures.
- The tables give their memory back once a burst of traces is gone.
- Traces of blocks far apart cost little more than those side by side.
- A snapshot's traces alike share their tuple.
- The traces table keeps its invariants (a C test of
  Python/tracemalloc_table.h through _testinternalcapi, which test_capi
  runs too; here so that the sanitizer runs have it).
"""

import sys
import tracemalloc
import unittest
from test.support import import_helper

_testinternalcapi = import_helper.import_module('_testinternalcapi')

KiB = 1024
MiB = 1024 * KiB


def call_nested(depth, func):
    """Call func() with depth more frames on the stack."""
    if depth <= 0:
        return func()
    return call_nested(depth - 1, func)


class MemoryTestCase(unittest.TestCase):

    def setUp(self):
        if tracemalloc.is_tracing():
            self.skipTest("tracemalloc must be stopped before the test")
        self.addCleanup(tracemalloc.stop)


class TestStartCost(MemoryTestCase):

    def check_start_cost(self, nframe):
        tracemalloc.start(nframe)
        # mostly the traces table's fixed part: its cache of recent
        # windows and its counts of spilled traces, 16 KiB each
        self.assertLessEqual(tracemalloc.get_tracemalloc_memory(), 96 * KiB)

    def test_start_with_one_frame(self):
        self.check_start_cost(1)

    def test_start_with_25_frames(self):
        self.check_start_cost(25)

    def test_start_with_the_highest_limit(self):
        self.check_start_cost(65535)

    def test_buffers_grow_with_a_deep_traceback(self):
        tracemalloc.start(1000)
        data = call_nested(300, lambda: bytes(5000))
        traceback = tracemalloc.get_object_traceback(data)
        # all of them: the buffers start with room for 16
        self.assertGreater(len(traceback), 300)
        self.assertEqual(traceback[-1].filename, __file__)

    def test_cost_grows_with_what_is_captured(self):
        tracemalloc.start(200)
        before = tracemalloc.get_tracemalloc_memory()
        data = [call_nested(150, lambda: bytes(5000)) for _ in range(3)]
        self.assertGreater(tracemalloc.get_tracemalloc_memory(), before)
        del data


class TestTablesShrink(MemoryTestCase):

    def burst(self, count, size):
        blocks = [bytes(size) for _ in range(count)]
        peak = tracemalloc.get_tracemalloc_memory()
        del blocks
        return peak

    def check_shrinks(self, size):
        tracemalloc.start()
        before = tracemalloc.get_tracemalloc_memory()
        peak = self.burst(200_000, size)
        self.assertGreater(peak, before + MiB)
        after = tracemalloc.get_tracemalloc_memory()
        # within 2x of what the traces left need, with room for the
        # tables' minimum sizes
        self.assertLess(after, 2 * before + 256 * KiB)

    def test_spilled_traces_shrink(self):
        # larger than a leaf entry takes: in the spill
        self.check_shrinks(400)

    def test_leaves_shrink(self):
        self.check_shrinks(50)

    def test_tracked_blocks_shrink(self):
        domain = 9
        tracemalloc.start()
        track = _testinternalcapi.tracemalloc_track_rc
        untrack = _testinternalcapi.tracemalloc_untrack_rc
        # Half of them aligned (in leaves), half not (in the spill).  The
        # list and its ints are traced, and live through the test.
        ptrs = [0x10000 + 24 * i for i in range(100_000)]
        before = tracemalloc.get_tracemalloc_memory()
        for ptr in ptrs:
            track(domain, ptr, 100)
        self.assertGreater(tracemalloc.get_tracemalloc_memory(),
                           before + MiB)
        for ptr in ptrs:
            untrack(domain, ptr)
        self.assertLess(tracemalloc.get_tracemalloc_memory(),
                        2 * before + 256 * KiB)


class TestSparseTraces(MemoryTestCase):

    def test_blocks_in_the_holes_of_a_heap(self):
        # New blocks fill the holes left by freeing 1% of an untraced
        # heap: one traced block per window of address space.  A leaf per
        # block took 150 bytes per trace; the spill takes about 24.
        heap = [object() for _ in range(2_000_000)]
        for i in range(0, len(heap), 100):
            heap[i] = None
        tracemalloc.start()
        before = tracemalloc.get_tracemalloc_memory()
        count = 20_000
        blocks = [object() for _ in range(count)]
        per_trace = (tracemalloc.get_tracemalloc_memory() - before) / count
        self.assertLess(per_trace, 48)
        del blocks, heap


class TestSnapshotMemory(MemoryTestCase):

    def test_traces_of_one_place_share_their_tuple(self):
        # The (domain, size, traceback, total_nframe) tuples of traces
        # alike are one object: a snapshot of a million small objects
        # allocated at one line holds a few tuples, not a million.
        tracemalloc.start()
        blocks = [object() for _ in range(10_000)]
        traceback = tracemalloc.get_object_traceback(blocks[0])
        size = sys.getsizeof(blocks[0])
        alike = [trace for trace in tracemalloc._get_traces()
                 if trace[1] >= size and trace[2] == traceback._frames]
        self.assertGreaterEqual(len(alike), 10_000)
        self.assertLess(len({id(trace) for trace in alike}), 10)
        del blocks


class TestTracesTable(unittest.TestCase):

    def test_table_on_its_own(self):
        # Leaves, the spill, big sizes, the top pointer, moves between a
        # leaf and the spill, removal in bursts: checked in C.
        _testinternalcapi.test_tracemalloc_table()


if __name__ == '__main__':
    unittest.main()
