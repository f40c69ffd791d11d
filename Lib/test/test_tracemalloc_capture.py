"""Tests for what tracemalloc records of each allocation where a shortcut
could get it wrong.

The fork caches the traceback captured for each (code object, instruction)
chain and skips work in the allocator hooks (a large block that pymalloc
passes on to the raw allocator is untraced once, say).  These tests check
that the tracebacks and sizes recorded stay exactly what upstream records:
they pass on the unpatched base too.
"""

import gc
import struct
import sys
import tracemalloc
import unittest
from test.support import import_helper


def compile_allocator(filename, nlines):
    """Return a function of one argument i < nlines that allocates a new
    bytes object (never taken from a free list) on line i + 2 of a code
    object whose file name is filename."""
    lines = ['def alloc(i):']
    for i in range(nlines):
        lines.append(f'    if i == {i}: return bytes(i + 10)')
    namespace = {}
    exec(compile('\n'.join(lines), filename, 'exec'), namespace)
    return namespace['alloc']


def where(obj):
    """(filename, lineno) of the most recent frame of obj's traceback."""
    frame = tracemalloc.get_object_traceback(obj)[-1]
    return (frame.filename, frame.lineno)


def call_at_depth(depth, func, *args):
    """Call func(*args) from depth frames of this function."""
    if depth <= 1:
        return func(*args)
    return call_at_depth(depth - 1, func, *args)


def stack_depth():
    """The number of frames of the caller's stack, the caller's included."""
    depth, frame = 0, sys._getframe(1)
    while frame is not None:
        depth += 1
        frame = frame.f_back
    return depth


def compile_with_locals(signature, nlocals, body, filename):
    """Compile `def signature:` with body (a list of lines), after
    assigning nlocals local variables, and return the function: its frames
    take more room on the data stack as nlocals grows."""
    lines = [f'def {signature}:']
    if nlocals:
        names = ', '.join(f'v{i}' for i in range(nlocals))
        lines.append(f'    {names} = {", ".join(["0"] * nlocals)}')
    lines += [f'    {line}' for line in body]
    namespace = {}
    exec(compile('\n'.join(lines), filename, 'exec'), namespace)
    return namespace[signature.partition('(')[0]]


def compile_descent(nlocals):
    """Return a function descend(path, leaf) that calls path[0](path[1:],
    leaf), or leaf() if path is empty, from a frame of nlocals local
    variables: functions of different frame sizes, to put frames of
    different depths at the same addresses of the data stack."""
    return compile_with_locals(
        'descend(path, leaf)', nlocals,
        ['if not path: return leaf()', 'return path[0](path[1:], leaf)'],
        f'<descend-{nlocals}>')


def compile_quiet_descent(nlocals):
    """Like compile_descent(), but the function, descend(path, i, leaf,
    arg), allocates nothing: it calls path[i](path, i + 1, leaf, arg), or
    leaf(arg) once i == len(path)."""
    return compile_with_locals(
        'descend(path, i, leaf, arg)', nlocals,
        ['if i == len(path): return leaf(arg)',
         'return path[i](path, i + 1, leaf, arg)'],
        f'<quiet-{nlocals}>')


def sized_allocator(filename, sites=1):
    """Return a function of one argument n that allocates new bytes objects
    of n, n + 1, ... bytes, one per site, on lines 2, 3, ... of a code
    object whose file name is filename, and returns them."""
    lines = ['def alloc(n):']
    lines += [f'    obj{k} = bytes(n + {k})' for k in range(sites)]
    lines.append('    return ' + ', '.join(f'obj{k}' for k in range(sites)))
    namespace = {}
    exec(compile('\n'.join(lines), filename, 'exec'), namespace)
    return namespace['alloc']


def totals_by_size(filename, sizes):
    """{n: total_nframe} of the bytes objects of n bytes, for n in sizes,
    that a function sized_allocator() made for filename allocated."""
    header = sys.getsizeof(b'')
    totals = {trace.size - header: trace.traceback.total_nframe
              for trace in tracemalloc.take_snapshot().traces
              if trace.traceback[-1].filename == filename
              and trace.traceback[-1].lineno >= 2}
    return {n: totals.get(n) for n in sizes}


def outer_frames(frame):
    """[(filename, lineno)] of frame and the frames below it, the oldest
    first, as tracemalloc.Traceback orders them."""
    frames = []
    while frame is not None:
        frames.append((frame.f_code.co_filename, frame.f_lineno))
        frame = frame.f_back
    return frames[::-1]


class DepthRecorder:
    """Allocates bytes objects of distinct sizes with a function of
    sized_allocator(filename, sites), and records the depth and the stack
    of each allocation."""

    def __init__(self, filename, sites=1):
        self.filename = filename
        self.sites = sites
        self.alloc = sized_allocator(filename, sites)
        self.depths = {}
        self.stacks = {}
        self.objs = []

    def allocate(self):
        size = 100 + len(self.depths)
        line = sys._getframe().f_lineno + 1
        self.objs.append(self.alloc(size))
        # the frames below this one, this one, and the frame of alloc()
        stack = outer_frames(sys._getframe(1)) + [(__file__, line)]
        for k in range(self.sites):
            self.depths[size + k] = len(stack) + 1
            self.stacks[size + k] = stack + [(self.filename, 2 + k)]

    def totals(self):
        """{size: total_nframe} of the objects allocated, as traced."""
        return totals_by_size(self.filename, self.depths)

    def traced_stacks(self):
        """{size: [(filename, lineno)]} of the objects allocated, as
        traced, the oldest frame first."""
        header = sys.getsizeof(b'')
        stacks = {trace.size - header: [(frame.filename, frame.lineno)
                                        for frame in trace.traceback]
                  for trace in tracemalloc.take_snapshot().traces
                  if trace.traceback[-1].filename == self.filename
                  and trace.traceback[-1].lineno >= 2}
        return {n: stacks.get(n) for n in self.stacks}


def allocate_down_random_stacks(recorder, seed, count=400):
    """Call recorder.allocate() count times, each from the bottom of a
    random stack of up to 30 frames of five sizes (see compile_descent())."""
    import random
    rng = random.Random(seed)
    descents = [compile_descent(n) for n in (0, 1, 5, 13, 40)]
    for _ in range(count):
        path = [rng.choice(descents) for _ in range(rng.randrange(30))]
        if path:
            path[0](path[1:], recorder.allocate)
        else:
            recorder.allocate()


def snapshot_tracebacks(filename, i=None):
    """The tracebacks of the objects that the function compile_allocator()
    made for filename allocated: alloc(i) only, if i is given."""
    snapshot = tracemalloc.take_snapshot()
    return [trace.traceback for trace in snapshot.traces
            if trace.traceback[-1].filename == filename
            and trace.traceback[-1].lineno > 1
            and (i is None or trace.size == sys.getsizeof(bytes(i + 10)))]


class TracingTestCase(unittest.TestCase):
    nframe = 1

    def setUp(self):
        if tracemalloc.is_tracing():
            self.skipTest('tracemalloc must be stopped before the test')
        tracemalloc.start(self.nframe)
        self.addCleanup(tracemalloc.stop)


class CaptureTests(TracingTestCase):
    def assertRecorded(self, recorder):
        """Check the frames and the total_nframe traced for each object
        that recorder allocated, against those it recorded."""
        self.assertEqual(recorder.totals(), recorder.depths)
        expected = {n: stack[-self.nframe:]
                    for n, stack in recorder.stacks.items()}
        self.assertEqual(recorder.traced_stacks(), expected)


    def test_lines_of_one_code_object(self):
        alloc = compile_allocator('<lines>', 20)
        objs = [alloc(i) for i in range(20)]
        for i, obj in enumerate(objs):
            self.assertEqual(where(obj), ('<lines>', i + 2))

    def test_same_line_twice(self):
        alloc = compile_allocator('<twice>', 3)
        objs = [alloc(1) for _ in range(2)]
        self.assertEqual(tracemalloc.get_object_traceback(objs[0]),
                         tracemalloc.get_object_traceback(objs[1]))
        self.assertEqual(where(objs[0]), ('<twice>', 3))

    def test_total_nframe_follows_depth(self):
        alloc = compile_allocator('<depth>', 1)
        objs = [call_at_depth(extra, alloc, 0) for extra in (1, 5, 2, 5, 1)]
        totals = sorted(traceback.total_nframe
                        for traceback in snapshot_tracebacks('<depth>', 0))
        self.assertEqual(len(totals), len(objs))
        base = totals[0]
        self.assertEqual(totals, [base, base, base + 1, base + 4, base + 4])

    def test_many_allocation_sites(self):
        # More sites than the fork's cache has entries: they evict each
        # other, and each traceback must still be its own.
        alloc = compile_allocator('<many>', 3000)
        objs = [alloc(i) for i in range(3000)]
        for i, obj in enumerate(objs):
            self.assertEqual(where(obj), ('<many>', i + 2))
        lines = {traceback[-1].lineno
                 for traceback in snapshot_tracebacks('<many>')}
        self.assertEqual(lines, set(range(2, 3002)))

    def test_many_allocation_sites_met_again(self):
        # Sites that evict each other from the fork's cache, each met again
        # in another order: a traceback found there must be its own site's.
        import random
        alloc = compile_allocator('<again>', 3000)
        rng = random.Random(5)
        first = {}
        for _ in range(3):
            sites = list(range(3000))
            rng.shuffle(sites)
            for i in sites:
                traceback = tracemalloc.get_object_traceback(alloc(i))
                self.assertEqual(traceback[-1].filename, '<again>')
                self.assertEqual(traceback[-1].lineno, i + 2)
                self.assertEqual(traceback, first.setdefault(i, traceback))

    def test_many_allocation_sites_freed(self):
        # Traces of many tracebacks (stored apart beyond a limit, which is
        # low in a debug build) leave nothing behind once freed.
        alloc = compile_allocator('<freed>', 3000)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        objs = [alloc(i) for i in range(3000)]
        expected = sum(sys.getsizeof(obj) for obj in objs)
        self.assertAlmostEqual(tracemalloc.get_traced_memory()[0] - before,
                               expected, delta=expected // 20)
        self.assertEqual(where(objs[-1]), ('<freed>', 3001))
        del objs
        self.assertLess(tracemalloc.get_traced_memory()[0] - before, 2000)

    def test_same_site_after_clear_traces(self):
        alloc = compile_allocator('<clear>', 2)
        before = alloc(1)
        self.assertEqual(where(before), ('<clear>', 3))
        tracemalloc.clear_traces()
        self.assertIsNone(tracemalloc.get_object_traceback(before))
        after = alloc(1)
        self.assertEqual(where(after), ('<clear>', 3))
        tracebacks = snapshot_tracebacks('<clear>')
        self.assertEqual(len(tracebacks), 1)
        self.assertEqual(tracebacks[0][-1].lineno, 3)

    def test_site_after_clear_traces_outlives_its_code(self):
        # A traceback interned after clear_traces() holds its filename in
        # the new tables: the filename outlives the code object.
        filename = ''.join(['<clear-', 'then-free>'])
        alloc = compile_allocator(filename, 2)
        alloc(1)
        tracemalloc.clear_traces()
        obj = alloc(1)
        del alloc, filename
        gc.collect()
        self.assertEqual(where(obj), ('<clear-then-free>', 3))

    def test_code_objects_created_and_destroyed(self):
        # A dead code object's address is soon reused by a new one: what
        # was cached for the old one must not be reported for the new.
        for n in range(200):
            filename = f'<code-{n}>'
            alloc = compile_allocator(filename, n % 7 + 1)
            obj = alloc(n % 7)
            self.assertEqual(where(obj), (filename, n % 7 + 2))
            del alloc
            gc.collect()

    def test_total_nframe_as_the_stack_moves(self):
        # The fork counts the frames from the last frames whose count it
        # knows, as long as they are still on the stack: frames popped and
        # replaced by others at the same addresses, with another number of
        # frames below, must be counted again.
        recorder = DepthRecorder('<moves>')
        allocate_down_random_stacks(recorder, seed=3)
        self.assertRecorded(recorder)

    def test_total_nframe_of_two_sites_as_the_stack_moves(self):
        # The fork keeps the traceback of each allocation site of the frame
        # on top: what it kept for a frame must not be taken for another
        # one pushed at the same address, with another number of frames
        # below, once the first is popped.
        recorder = DepthRecorder('<two-sites>', sites=2)
        allocate_down_random_stacks(recorder, seed=5)
        self.assertRecorded(recorder)

    def test_total_nframe_of_two_sites_below_frames_that_allocate_nothing(self):
        # The same, with the frame of alloc() the first to allocate on
        # each new stack: its first site counts the frames, the second
        # must not take what the fork kept for the frame there before.
        import random
        rng = random.Random(7)
        alloc = sized_allocator('<quiet>', sites=2)
        descents = [compile_quiet_descent(n) for n in (0, 1, 5, 13, 40)]
        here = stack_depth()
        depths, objs = {}, []
        for j in range(300):
            path = [rng.choice(descents) for _ in range(rng.randrange(30))]
            size = 100 + 2 * j
            # this frame, the path's and alloc()'s
            depths[size] = depths[size + 1] = here + len(path) + 1
            if path:
                objs.append(path[0](path, 1, alloc, size))
            else:
                objs.append(alloc(size))
        self.assertEqual(totals_by_size('<quiet>', depths), depths)

    def test_total_nframe_as_the_stack_moves_for_long(self):
        # Many sites met once, then stacks that move for longer than the
        # fork leaves its tracebacks by frame alone when they are seldom
        # of use (at 1 frame): before, while and after it does, each
        # traceback must be its own.
        alloc = compile_allocator('<once>', 3000)
        for i in range(3000):
            alloc(i)
        recorder = DepthRecorder('<moves-long>', sites=2)
        allocate_down_random_stacks(recorder, seed=11, count=3000)
        self.assertRecorded(recorder)

    def test_loop_allocating_between_deep_calls(self):
        # A frame that stays allocates at one instruction again and again,
        # while the calls it makes in between push and pop frames (and
        # allocate) at every depth.
        recorder = DepthRecorder('<between>')
        here = stack_depth()
        objs = []
        line = sys._getframe().f_lineno + 2
        for i, extra in enumerate((3, 40, 1, 300, 2, 60, 5, 700, 1)):
            objs.append(bytes(1000 + i))
            call_at_depth(extra, recorder.allocate)
        self.assertRecorded(recorder)
        sizes = {sys.getsizeof(obj) for obj in objs}
        tracebacks = [trace.traceback
                      for trace in tracemalloc.take_snapshot().traces
                      if trace.size in sizes]
        self.assertEqual(len(tracebacks), len(objs))
        for traceback in tracebacks:
            self.assertEqual(traceback[-1], tracemalloc.Frame((__file__, line)))
            self.assertEqual(traceback.total_nframe, here)

    def test_same_instruction_after_clear_traces(self):
        # clear_traces() drops the tracebacks the fork kept for the frame
        # on top; the next allocation at the same instruction needs a new
        # one.
        objs = []
        line = sys._getframe().f_lineno + 2
        for i in range(3):
            objs.append(bytes(1000 + i))
            if i == 1:
                tracemalloc.clear_traces()
        self.assertIsNone(tracemalloc.get_object_traceback(objs[0]))
        self.assertIsNone(tracemalloc.get_object_traceback(objs[1]))
        self.assertEqual(where(objs[2]), (__file__, line))
        snapshot = tracemalloc.take_snapshot()
        sizes = {trace.size for trace in snapshot.traces
                 if trace.traceback[-1] == tracemalloc.Frame((__file__, line))}
        self.assertIn(sys.getsizeof(objs[2]), sizes)

    def test_same_instruction_across_sessions(self):
        # A new session has a new traceback limit: nothing kept by the
        # previous one for the frame on top may be reused.
        for limit in (1, 3, 1, 25, 2):
            tracemalloc.stop()
            tracemalloc.start(limit)
            obj = bytes(1000)
            traceback, = [trace.traceback
                          for trace in tracemalloc.take_snapshot().traces
                          if trace.size == sys.getsizeof(obj)]
            self.assertEqual(len(traceback), min(limit, stack_depth()))
            self.assertEqual(traceback.total_nframe, stack_depth())

    def test_total_nframe_through_a_generator(self):
        # A generator's frame is not on the data stack: alloc() run by the
        # generator has its frame where alloc() called directly had its
        # own, with one more frame below.
        recorder = DepthRecorder('<through>')
        alloc, depths = recorder.alloc, recorder.depths
        def gen():
            size = yield
            while True:
                size = yield alloc(size)
        it = gen()
        next(it)
        here = stack_depth()
        objs = []
        for size in range(100, 140, 2):
            objs.append(alloc(size))
            depths[size] = here + 1
            objs.append(it.send(size + 1))
            depths[size + 1] = here + 2
        self.assertEqual(recorder.totals(), depths)

    def test_total_nframe_down_and_up_a_deep_recursion(self):
        recorder = DepthRecorder('<recursion>')
        def recurse(n):
            recorder.allocate()
            if n:
                recurse(n - 1)
                recorder.allocate()
        recurse(200)
        self.assertRecorded(recorder)

    def test_total_nframe_after_an_exception_unwinds(self):
        recorder = DepthRecorder('<unwinds>')
        def leaf():
            recorder.allocate()
            if len(recorder.objs) % 2:
                raise ValueError
        for extra in (20, 3, 15, 1, 30, 2, 400, 150, 700, 5):
            try:
                call_at_depth(extra, leaf)
            except ValueError:
                pass
        self.assertRecorded(recorder)

    def test_total_nframe_in_threads(self):
        # Threads taking turns, each at its own depth.
        import threading
        recorder = DepthRecorder('<threads>')
        turns = [threading.Semaphore(0), threading.Semaphore(0)]
        def run(me, extra):
            for i in range(20):
                turns[me].acquire()
                call_at_depth(extra + i % 3, recorder.allocate)
                turns[1 - me].release()
        threads = [threading.Thread(target=run, args=(0, 12)),
                   threading.Thread(target=run, args=(1, 2))]
        for thread in threads:
            thread.start()
        turns[0].release()
        for thread in threads:
            thread.join()
        self.assertRecorded(recorder)

    def test_generator_resumed_from_different_depths(self):
        alloc = compile_allocator('<gen>', 1)
        def gen():
            while True:
                yield alloc(0)
        it = gen()
        objs = [next(it), call_at_depth(6, next, it)]
        self.assertEqual(where(objs[0]), ('<gen>', 2))
        self.assertEqual(where(objs[1]), ('<gen>', 2))
        totals = sorted(traceback.total_nframe
                        for traceback in snapshot_tracebacks('<gen>', 0))
        self.assertEqual(totals[1], totals[0] + 6)

    def test_frames_of_a_caller_calling_from_two_lines(self):
        # The fork keeps the traceback of each frame at its instruction,
        # the frames below the one on top included: the frames of a
        # caller pushed at the same address each time, calling from
        # either of two lines, must not be taken for each other.
        recorder = DepthRecorder('<two-lines>')
        def caller(i):
            if i % 3:
                recorder.allocate()
            else:
                recorder.allocate()
        for i in range(60):
            caller(i)
        self.assertRecorded(recorder)

    def test_frames_of_many_sites_of_one_frame(self):
        # More allocation sites in one frame than the fork keeps tracebacks
        # of frames at their instruction: each must be told from the
        # others.
        recorder = DepthRecorder('<many-sites>', sites=600)
        recorder.allocate()
        call_at_depth(3, recorder.allocate)
        self.assertRecorded(recorder)

    def test_frames_below_a_generator_resumed_from_two_places(self):
        recorder = DepthRecorder('<resumed>')
        def gen():
            while True:
                yield recorder.allocate()
        it = gen()
        for i in range(40):
            if i % 2:
                next(it)
            else:
                call_at_depth(4 + i % 3, next, it)
        self.assertRecorded(recorder)

    def test_frames_of_callers_created_and_destroyed(self):
        # Code objects that die free addresses for new ones: what the fork
        # kept of a caller's code object must not serve a new one there.
        recorder = DepthRecorder('<callee>')
        for i in range(100):
            caller = compile_with_locals('caller(f)', i % 4, ['f()'],
                                         f'<caller-{i}>')
            call_at_depth(1 + i % 5, caller, recorder.allocate)
            del caller
            gc.collect()
        self.assertRecorded(recorder)

    def test_frames_of_a_loop_calling_down_deep_stacks(self):
        # Deeper than the fork looks for a frame it knows the traceback
        # of, in a loop, each stack a little different from the last.
        recorder = DepthRecorder('<deep-loop>', sites=2)
        for i in range(60):
            call_at_depth(10 + i % 7, call_at_depth, 1 + i % 11,
                          recorder.allocate)
        self.assertRecorded(recorder)


class CaptureFewFramesTests(CaptureTests):
    # A limit under which the fork climbs down one frame at most
    nframe = 4


class CaptureManyFramesTests(CaptureTests):
    nframe = 25

    def test_frames_below_the_allocation(self):
        alloc = compile_allocator('<below>', 1)
        obj = call_at_depth(3, alloc, 0)
        frames = tracemalloc.get_object_traceback(obj)
        self.assertEqual(where(obj), ('<below>', 2))
        self.assertEqual([frame.filename for frame in frames[-4:-1]],
                         [__file__] * 3)
        self.assertEqual(len({frame.lineno for frame in frames[-4:-1]}), 2)


class TracebackLimitTests(unittest.TestCase):

    def test_limit_changes_between_sessions(self):
        alloc = compile_allocator('<limit>', 1)
        for limit in (1, 3, 1, 25, 2):
            with self.subTest(limit=limit):
                tracemalloc.start(limit)
                try:
                    obj = call_at_depth(30, alloc, 0)
                    frames = tracemalloc.get_object_traceback(obj)
                finally:
                    tracemalloc.stop()
                self.assertEqual(len(frames), limit)
                self.assertEqual(frames[-1].filename, '<limit>')


class NestedAllocatorTests(TracingTestCase):
    """pymalloc hands blocks larger than 512 bytes to the raw allocator:
    both domains are hooked, and the block is traced once."""

    def traced(self):
        # The int returned is a new traced block of a few dozen bytes.
        return tracemalloc.get_traced_memory()[0]

    def test_large_object_freed(self):
        before = self.traced()
        data = b'x' * 100_000
        self.assertAlmostEqual(self.traced() - before, sys.getsizeof(data),
                               delta=100)
        del data
        self.assertLess(self.traced() - before, 100)

    def test_large_object_resized(self):
        # realloc() of a large block: pymalloc reallocates it in the raw
        # domain, which may move it.  A stale trace left behind would be
        # at least the smallest of these sizes.
        sizes = [10_000, 100_000, 1_000_000, 20_000, 300_000, 10_000]
        buffer = bytearray()
        before = self.traced()
        for size in sizes:
            buffer[:] = bytes(size)
            self.assertAlmostEqual(self.traced() - before,
                                   size, delta=size // 2 + 1000)
        del buffer
        self.assertLess(self.traced() - before, 1000)

    def test_many_large_objects(self):
        before = self.traced()
        blocks = [bytes(1000 + i) for i in range(1000)]
        expected = sum(sys.getsizeof(block) for block in blocks)
        self.assertAlmostEqual(self.traced() - before, expected,
                               delta=expected // 100)
        del blocks
        self.assertLess(self.traced() - before, 1000)


class TrackedSizeTests(TracingTestCase):
    """Sizes of every magnitude, tracked with the C API with no memory
    behind them: the fork stores small sizes in the trace itself and the
    others aside, and the traces of small blocks aligned on 16 bytes in yet
    another structure than the others."""

    DOMAIN = 7
    PTR = 0x7ace0000
    SIZES = [0, 1, 255, 256, 257, 1023, 1024, 2**24 - 2, 2**24 - 1, 2**24,
             2**24 + 1, 2**31, 2**32 - 1, 2**32, 2**32 + 1, 2**40]

    def setUp(self):
        self.testcapi = import_helper.import_module('_testcapi')
        super().setUp()

    def track(self, ptr, size, domain=DOMAIN):
        self.testcapi.tracemalloc_track(domain, ptr, size)
        self.addCleanup(self.testcapi.tracemalloc_untrack, domain, ptr)

    def domain_sizes(self, domain=DOMAIN):
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.DomainFilter(True, domain)])
        return sorted(trace.size for trace in snapshot.traces)

    def test_sizes(self):
        for i, size in enumerate(self.SIZES):
            self.track(self.PTR + 16 * i, size)
        self.assertEqual(self.domain_sizes(), sorted(self.SIZES))

    def test_size_replaced(self):
        # each size replaced by every other: small and large, both ways
        for old in self.SIZES:
            for new in self.SIZES:
                with self.subTest(old=old, new=new):
                    self.track(self.PTR, old)
                    self.track(self.PTR, new)
                    self.assertEqual(self.domain_sizes(), [new])
                    self.testcapi.tracemalloc_untrack(self.DOMAIN, self.PTR)
                    self.assertEqual(self.domain_sizes(), [])

    def test_against_a_model(self):
        # Random tracks and untracks, clustered in address windows as real
        # blocks are, checked against a dict: the fork's table must find
        # every pointer it holds through insertions, removals and growth.
        import random
        rng = random.Random(5)
        bases = [rng.randrange(1, 1 << 36) << 4 for _ in range(8)]
        sizes = (16, 48, 2048, 2**24 - 1, 2**24, 2**33)
        model = {}
        for step in range(30_000):
            if rng.random() < 0.55 or not model:
                ptr = rng.choice(bases) + 16 * rng.randrange(2048)
                model[ptr] = rng.choice(sizes)
                self.testcapi.tracemalloc_track(self.DOMAIN, ptr, model[ptr])
            else:
                ptr = rng.choice(list(model))
                del model[ptr]
                self.testcapi.tracemalloc_untrack(self.DOMAIN, ptr)
        self.addCleanup(self.clear_domain, list(model))
        self.assertEqual(self.domain_sizes(), sorted(model.values()))

    def test_unaligned_pointers_next_to_aligned_ones(self):
        offsets = (0, 1, 8, 15, 16, 24)
        for i, offset in enumerate(offsets):
            self.track(self.PTR + offset, 100 + i)
        self.assertEqual(self.domain_sizes(), list(range(100, 106)))
        internal = import_helper.import_module('_testinternalcapi')
        for offset in offsets:
            self.assertIsNotNone(internal._PyTraceMalloc_GetTraceback(
                self.DOMAIN, self.PTR + offset))
        self.testcapi.tracemalloc_untrack(self.DOMAIN, self.PTR + 8)
        self.testcapi.tracemalloc_untrack(self.DOMAIN, self.PTR)
        self.assertEqual(self.domain_sizes(), [101, 103, 104, 105])

    def test_highest_pointer_is_never_found(self):
        # Traces spread over the whole table, then look-ups of the one
        # pointer that no table slot can hold: they find nothing, and
        # change nothing.
        for i in range(2000):
            self.track(self.PTR + 4096 * i + 8, 10)
        highest = 2 ** (8 * struct.calcsize('P')) - 1
        internal = import_helper.import_module('_testinternalcapi')
        self.assertIsNone(internal._PyTraceMalloc_GetTraceback(self.DOMAIN,
                                                               highest))
        self.testcapi.tracemalloc_untrack(self.DOMAIN, highest)
        self.assertEqual(self.domain_sizes(), [10] * 2000)

    def test_against_a_model_of_moving_blocks(self):
        # The live blocks move through the address space, as a program's
        # do over time: the windows left behind empty, the table grows and
        # rebuilds without them, and must still find every pointer.
        import random
        rng = random.Random(11)
        sizes = (16, 200, 256, 257, 5000, 2**30)
        model = {}
        for step in range(40_000):
            # a base moves up by 4 KiB every 100 steps; blocks live about
            # 2000 steps, so 20 bases hold blocks at any time
            base = self.PTR + (step // 100) * 4096
            if rng.random() < 0.5 or not model:
                ptr = base + 16 * rng.randrange(256) + rng.choice((0, 0, 8))
                model[ptr] = rng.choice(sizes)
                self.testcapi.tracemalloc_track(self.DOMAIN, ptr, model[ptr])
            else:
                ptr = min(model) if rng.random() < 0.5 else rng.choice(
                    list(model))
                del model[ptr]
                self.testcapi.tracemalloc_untrack(self.DOMAIN, ptr)
        self.addCleanup(self.clear_domain, list(model))
        self.assertEqual(self.domain_sizes(), sorted(model.values()))

    def clear_domain(self, ptrs):
        for ptr in ptrs:
            self.testcapi.tracemalloc_untrack(self.DOMAIN, ptr)

    def test_sizes_in_default_domain(self):
        before = tracemalloc.get_traced_memory()[0]
        sizes = [2**24 - 1, 2**24, 2**33]
        for i, size in enumerate(sizes):
            # the pointers are never dereferenced
            self.track(self.PTR + 16 * i, size, domain=0)
        self.assertAlmostEqual(tracemalloc.get_traced_memory()[0] - before,
                               sum(sizes), delta=1000)
        for i in range(len(sizes)):
            self.testcapi.tracemalloc_untrack(0, self.PTR + 16 * i)
        self.assertLess(tracemalloc.get_traced_memory()[0] - before, 1000)


class RecentBlocksTests(TracingTestCase):
    """Blocks just allocated, which most frees are of: their traces must be
    found, replaced, removed and listed like any other."""

    def setUp(self):
        self.testcapi = import_helper.import_module('_testcapi')
        super().setUp()

    def traced(self):
        return tracemalloc.get_traced_memory()[0]

    def test_snapshot_lists_block_just_allocated(self):
        data = bytes(100_000)
        sizes = [trace.size for trace in tracemalloc.take_snapshot().traces
                 if trace.traceback[-1].filename == __file__]
        self.assertIn(sys.getsizeof(data), sizes)

    def test_track_replaces_block_just_allocated(self):
        before = self.traced()
        data = bytes(100_000)
        self.testcapi.tracemalloc_track(0, id(data), 5)
        self.assertAlmostEqual(self.traced() - before, 5, delta=200)
        self.assertIsNotNone(tracemalloc.get_object_traceback(data))
        del data
        self.assertAlmostEqual(self.traced() - before, 0, delta=200)

    def test_track_block_just_allocated_with_a_big_size(self):
        before = self.traced()
        data = bytes(100_000)
        self.testcapi.tracemalloc_track(0, id(data), 2**33)
        self.assertAlmostEqual(self.traced() - before, 2**33, delta=200)
        self.assertIn(2**33, [trace.size for trace
                              in tracemalloc.take_snapshot().traces])
        del data
        self.assertAlmostEqual(self.traced() - before, 0, delta=200)

    def test_untrack_block_just_allocated(self):
        before = self.traced()
        data = bytes(100_000)
        self.testcapi.tracemalloc_untrack(0, id(data))
        self.assertIsNone(tracemalloc.get_object_traceback(data))
        self.assertAlmostEqual(self.traced() - before, 0, delta=200)
        del data
        self.assertAlmostEqual(self.traced() - before, 0, delta=200)

    def test_clear_traces_forgets_block_just_allocated(self):
        data = bytes(100_000)
        tracemalloc.clear_traces()
        self.assertIsNone(tracemalloc.get_object_traceback(data))
        del data
        self.assertLess(self.traced(), 100_000)

    def test_against_a_model(self):
        # Real blocks of every size, freed at once, soon or late, in random
        # order, some of them tracked again with another size: every live
        # block keeps its traceback and the traced memory follows.  The
        # model lives in lists allocated beforehand, so that it allocates
        # nothing itself.
        import random
        rng = random.Random(7)
        namespace = {}
        exec(compile('def alloc(n): return bytes(n)', '<model>', 'exec'),
             namespace)
        alloc = namespace['alloc']
        sizes = (2, 30, 400, 3000, 70_000)
        capacity = 2000
        objs = [None] * capacity
        tracked = [-1] * capacity   # index in sizes if tracked again
        count = 0

        def expected():
            return sum(sys.getsizeof(objs[i]) if tracked[i] < 0
                       else sizes[tracked[i]] for i in range(count))

        gc.collect()
        before = self.traced()
        for step in range(20_000):
            r = rng.random()
            if (r < 0.5 or count == 0) and count < capacity:
                obj = alloc(rng.choice(sizes))
                if rng.random() < 0.3:
                    del obj         # freed at once
                    continue
                objs[count] = obj
                tracked[count] = -1
                count += 1
                del obj
            elif r < 0.55:
                i = rng.randrange(count)
                tracked[i] = rng.randrange(len(sizes))
                self.testcapi.tracemalloc_track(0, id(objs[i]),
                                                sizes[tracked[i]])
            else:
                # mostly one of the last ones, as real programs do
                i = count - 1 - min(int(rng.expovariate(0.5)), count - 1)
                count -= 1
                objs[i], tracked[i] = objs[count], tracked[count]
                objs[count] = None
            if step % 1000 == 999:
                for i in range(count):
                    filename = where(objs[i])[0]
                    self.assertEqual(filename, '<model>' if tracked[i] < 0
                                     else __file__)
                size = expected()
                self.assertAlmostEqual(self.traced() - before, size,
                                       delta=1000)
        objs[:] = [None] * capacity
        self.assertAlmostEqual(self.traced() - before, 0, delta=1000)


if __name__ == "__main__":
    unittest.main()
