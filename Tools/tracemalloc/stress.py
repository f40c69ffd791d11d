#!/usr/bin/env python3
"""Stress the per-interpreter tracemalloc: many interpreters, many threads.

    python Tools/tracemalloc/stress.py [--seconds N] [--seed N]
                                       [--interpreters N] [--threads N]
                                       [--tracing {all,some}]
    make stress VARIANT=<variant> SECONDS=<n> [SEED=<n>]

For --seconds, a seeded random mix runs in the main interpreter and in
--interpreters subinterpreters at once (isolated and legacy ones, each
replaced by a new one after a few rounds), with up to --threads threads in
each: objects, big and small, and raw buffers (PyMem_RawMalloc, with and
without an attached thread state) allocated and freed; start() with various
frame limits, stop(), clear_traces(), reset_peak(); take_snapshot() with
statistics() and compare_to(); get_object_traceback(); PyTraceMalloc_Track()
and PyTraceMalloc_Untrack() with the thread state attached, detached, and
from a C thread that has none; short-lived threads; interpreters destroyed
while tracing and while their blocks are alive (their raw buffers are then
freed by the main interpreter).  With --tracing some, only the main
interpreter and every other subinterpreter slot ever start tracing: the
others allocate and free among them, and free the raw buffers they are
given, without tracing.

Each interpreter runs this file's code compiled with a filename that names
it, "<stress-X{id}>" ("<stress-X{id}-alloc>" for the functions that allocate
what the mix keeps), so that a trace tells which interpreter's code made it.
The invariants checked, besides the process surviving:

- whenever read: peak >= current traced memory;
- after start(), stop(), Track, Untrack, allocations: the figures and the
  tracebacks the documented semantics call for (checked only when no other
  thread started, stopped or cleared tracing in between);
- when an interpreter is quiescent (its threads joined; for the main
  interpreter, every interpreter paused): get_traced_memory()[0] equals the
  sum of the sizes of its traces, read right after them;
- no trace of an interpreter has a frame of another interpreter's code;
- once everything the mix allocated is freed: no trace is left with a frame
  of the allocating functions, nor in the domains used for Track, so the
  traced memory the run added is back to zero (no stale traces);
- the leftovers of the destroyed interpreters (every interpreter paused):
  none is a live interpreter's, get_leftovers() and get_interpreters() agree
  on their totals, and none is of a block the mix freed once it has freed
  everything.

The run happens in a child process, watched: the driver prints the seed,
then one summary line, and exits with 0 if all went well, 1 on a violation,
2 on a crash or an error, 3 on a hang (the child is killed after --seconds
plus --grace; it dumps its threads' tracebacks first).
"""

import gc
import json
import os
import random
import struct
import sys
import sysconfig
import threading
import time


MARK_PREFIX = '<stress-X'
DOMAIN_BASE = 0x57E55       # PyTraceMalloc_Track() domains: DOMAIN_BASE + 0..3
NDOMAINS = 4
NFRAMES = (1, 1, 1, 2, 3, 10, 25, 100, 500)
KINDS = ('bytes', 'bytearray', 'str', 'list', 'tuple', 'dict', 'obj', 'deep')
# Kinds whose memory block comes from the allocator every time (no free
# list), so a new object always has a trace of its own while tracing.
EXACT_KINDS = frozenset({'bytes', 'bytearray', 'str', 'deep'})
LIVE_BYTES = 4 << 20        # per thread
KEEP_MAX = 400              # blocks an interpreter keeps across rounds
MAX_REPORTED = 20           # violations reported per round

# The free-threaded build keeps up to 4 chunks of its object stacks (the
# queues of biased reference counting, the GC's work lists) in a free list
# per thread, which gc.collect() does not empty.  A chunk that a thread
# allocated while it ran the ALLOC section below keeps that traceback, alive
# in the free list of whichever thread freed it: a live block, not a stale
# trace.  The mix never allocates a raw block of that size itself.
FREE_THREADED = bool(sysconfig.get_config_var('Py_GIL_DISABLED'))
STACK_CHUNK_SIZE = (2 + 254) * struct.calcsize('P')    # prev, n, objs[254]
STACK_CHUNKS_PER_THREAD = 4


# === Interpreter side =======================================================
#
# The code from here to "Driver side" runs in every interpreter, the main one
# included: each compiles this whole file into a namespace of its own, under
# the name "<stress-X{id}>", then the ALLOC section again under the name
# "<stress-X{id}-alloc>".  Its globals are set by interp_init().

# BEGIN ALLOC
# Allocate what the mix keeps; these call nothing but C code, so any trace
# with a frame here is of a block allocated on their behalf.

def alloc_bytes(n):
    return bytes(n)

def alloc_bytearray(n):
    return bytearray(n)

def alloc_str(n):
    return 'x' * n

def alloc_list(n):
    return [None] * n

def alloc_tuple(n):
    return tuple(range(n))

def alloc_dict(n):
    return dict.fromkeys(range(n))

def alloc_obj(n):
    obj = Blob()
    obj.size = n
    obj.items = [n]
    return obj

def alloc_deep(depth, n):
    if depth > 0:
        return alloc_deep(depth - 1, n)
    return bytes(n)

def alloc_raw(n):
    return RAW_MALLOC(n)

def alloc_raw_detached(n):
    return RAW_MALLOC_NOGIL(n)
# END ALLOC


class Blob:
    pass


def interp_init(args_json):
    """Set up the globals of this interpreter's stress namespace."""
    global IID, IS_MAIN, MARK, MARK_ALLOC, OWN_MARKS, HOST_FILE
    global tracemalloc, _tracemalloc, traceback, GET_TB
    global RAW_MALLOC, RAW_FREE, RAW_MALLOC_NOGIL, RAW_FREE_NOGIL
    global TRACK_RC, UNTRACK_RC, PY_TRACK, PY_UNTRACK, C_TRACK, C_UNTRACK
    global HOWS, ALLOC, CTL, EPOCH, KEEP, VIOLATIONS
    import ctypes
    import tracemalloc
    import _tracemalloc
    import traceback
    import _testinternalcapi

    args = json.loads(args_json)
    IID = args['iid']
    IS_MAIN = args['is_main']
    MARK = f'{MARK_PREFIX}{IID}>'
    MARK_ALLOC = f'{MARK_PREFIX}{IID}-alloc>'
    OWN_MARKS = frozenset({MARK, MARK_ALLOC})
    HOST_FILE = args['host_file']
    GET_TB = _testinternalcapi._PyTraceMalloc_GetTraceback

    def cfunc(lib, name, restype, argtypes):
        func = getattr(lib, name)
        func.restype = restype
        func.argtypes = argtypes
        return func

    # PyDLL calls keep the thread state attached; CDLL calls detach it.
    api = ctypes.pythonapi
    lib = ctypes.CDLL(None)
    vp, size_t = ctypes.c_void_p, ctypes.c_size_t
    uint, cint = ctypes.c_uint, ctypes.c_int
    RAW_MALLOC = cfunc(api, 'PyMem_RawMalloc', vp, [size_t])
    RAW_FREE = cfunc(api, 'PyMem_RawFree', None, [vp])
    RAW_MALLOC_NOGIL = cfunc(lib, 'PyMem_RawMalloc', vp, [size_t])
    RAW_FREE_NOGIL = cfunc(lib, 'PyMem_RawFree', None, [vp])
    PY_TRACK = cfunc(api, 'PyTraceMalloc_Track', cint, [uint, size_t, size_t])
    PY_UNTRACK = cfunc(api, 'PyTraceMalloc_Untrack', cint, [uint, size_t])
    C_TRACK = cfunc(lib, 'PyTraceMalloc_Track', cint, [uint, size_t, size_t])
    C_UNTRACK = cfunc(lib, 'PyTraceMalloc_Untrack', cint, [uint, size_t])
    # how: 0 thread state attached, 1 detached, 2 from a bare C thread
    # (only with the helpers of patches/testcapi-tracemalloc-threads.patch).
    TRACK_RC = getattr(_testinternalcapi, 'tracemalloc_track_rc', None)
    UNTRACK_RC = getattr(_testinternalcapi, 'tracemalloc_untrack_rc', None)
    HOWS = (0, 1, 2) if TRACK_RC and UNTRACK_RC else (0, 1)

    ALLOC = {'bytes': alloc_bytes, 'bytearray': alloc_bytearray,
             'str': alloc_str, 'list': alloc_list, 'tuple': alloc_tuple,
             'dict': alloc_dict, 'obj': alloc_obj}
    CTL = threading.Lock()      # serialises start/stop/clear_traces
    EPOCH = 0                   # odd while one runs, bumped by each
    KEEP = []                   # blocks kept across rounds
    VIOLATIONS = []

    # Warm up, tracing off: the caches the mix's code fills on first use
    # (shared keys, ctypes converters, modules the snapshot code imports)
    # must not be charged to the allocating functions.
    for _ in range(2):
        for func in ALLOC.values():
            func(3)
            func(5000)
        alloc_deep(2, 100)
        raw_free(alloc_raw(100), True)
        raw_free(alloc_raw_detached(100), False)
        for how in HOWS:
            token = object()
            track(DOMAIN_BASE, id(token), 10, how)
            untrack(DOMAIN_BASE, id(token), how)
        GET_TB(0, 0)
    if not tracemalloc.is_tracing():
        tracemalloc.start()
        snap = tracemalloc.take_snapshot()
        for key in ('lineno', 'filename', 'traceback'):
            snap.statistics(key)
            snap.compare_to(snap, key)
        snap.filter_traces([tracemalloc.Filter(True, MARK),
                            tracemalloc.DomainFilter(False, DOMAIN_BASE)])
        tracemalloc.get_object_traceback(snap)
        del snap
        tracemalloc.stop()
    gc.collect()


def violation(msg):
    if len(msg) > 1000:
        msg = msg[:400] + ' [...] ' + msg[-600:]
    VIOLATIONS.append(f'X{IID} {threading.current_thread().name}: {msg}')


def bump_epoch():
    """Mark the start or the end of start/stop/clear_traces (CTL held)."""
    global EPOCH
    EPOCH += 1


def stable(epoch):
    """True if no start/stop/clear_traces ran since EPOCH read *epoch*."""
    return epoch % 2 == 0 and EPOCH == epoch


def track(domain, ptr, size, how):
    if TRACK_RC is not None:
        return TRACK_RC(domain, ptr, size, how)
    return (C_TRACK if how else PY_TRACK)(domain, ptr, size)


def untrack(domain, ptr, how):
    if UNTRACK_RC is not None:
        return UNTRACK_RC(domain, ptr, how)
    return (C_UNTRACK if how else PY_UNTRACK)(domain, ptr)


def raw_free(ptr, detached):
    (RAW_FREE_NOGIL if detached else RAW_FREE)(ptr)


def is_foreign(filename):
    """Is filename that of code this interpreter never runs?"""
    if filename.startswith(MARK_PREFIX):
        return filename not in OWN_MARKS
    return filename == HOST_FILE and not IS_MAIN


def foreign_frames(traces):
    """The tracebacks among traces that have a frame of foreign code."""
    seen = set()
    bad = []
    for trace in traces:
        frames = trace[2]
        if id(frames) in seen:
            continue
        seen.add(id(frames))
        if any(is_foreign(filename) for filename, _ in frames):
            bad.append(frames)
    return bad


def check_frames(frames, what):
    if frames is not None and any(is_foreign(f) for f, _ in frames):
        violation(f'{what}: traceback with foreign frames: {frames}')


def check_allocated_here(frames, what):
    """what, allocated by this interpreter's ALLOC code while it traced,
    must have a traceback that starts there."""
    if frames is None:
        violation(f'{what} allocated while tracing has no traceback')
    elif frames[0][0] != MARK_ALLOC:
        violation(f'{what} allocated by {MARK_ALLOC} has the traceback '
                  f'{frames}')


class Worker:
    """One thread of the random mix."""

    def __init__(self, tno, seed, deadline, max_ops):
        self.tno = tno
        self.rng = random.Random(seed)
        self.deadline = deadline
        self.max_ops = max_ops
        self.live = []          # [kind, obj, epoch, tracing, size]
        self.nbytes = 0
        self.raws = []          # [ptr, size]
        self.tracks = []        # [domain, token, how]; ptr is id(token)
        self.prev = None        # previous snapshot
        self.ops = 0
        self.checks = 0

    def run(self):
        try:
            while (self.ops < self.max_ops
                   and time.monotonic() < self.deadline):
                op = self.rng.choices(OP_FUNCS, cum_weights=OP_CUM)[0]
                op(self)
                self.ops += 1
        except BaseException:
            violation(f'exception in thread {self.tno}:\n'
                      + traceback.format_exc())
        finally:
            self.finish()

    def size(self):
        rng = self.rng
        if rng.random() < 0.85:
            return rng.randint(2, 600)
        return rng.choice((4096, 65536, 300_000, 1_100_000)) + rng.randint(0, 999)

    # --- objects

    def op_alloc(self):
        rng = self.rng
        kind = rng.choice(KINDS)
        n = self.size()
        depth = rng.randint(1, 30)
        if kind not in EXACT_KINDS:
            n = min(n, 3000)
        while self.live and self.nbytes + n > LIVE_BYTES:
            self.nbytes -= self.live.pop(0)[4]
        epoch = EPOCH
        tracing = tracemalloc.is_tracing()
        if kind == 'deep':
            obj = alloc_deep(depth, n)
        else:
            obj = ALLOC[kind](n)
        self.live.append([kind, obj, epoch, tracing, n])
        self.nbytes += n

    def op_free(self):
        if self.live:
            self.nbytes -= self.live.pop(self.rng.randrange(len(self.live)))[4]

    def op_object_traceback(self):
        if not self.live:
            return
        kind, obj, epoch, tracing, n = self.live[
            self.rng.randrange(len(self.live))]
        tb = tracemalloc.get_object_traceback(obj)
        frames = None if tb is None else tuple(
            (frame.filename, frame.lineno) for frame in reversed(tb))
        self.checks += 1
        check_frames(frames, f'get_object_traceback({kind})')
        if kind in EXACT_KINDS and tracing and stable(epoch):
            self.checks += 1
            check_allocated_here(frames, f'{kind} object of {n} bytes')

    # --- raw buffers

    def op_raw_alloc(self):
        n = self.size()
        detached = self.rng.random() < 0.5
        epoch = EPOCH
        tracing = tracemalloc.is_tracing()
        ptr = alloc_raw_detached(n) if detached else alloc_raw(n)
        if not ptr:
            violation(f'PyMem_RawMalloc({n}) failed')
            return
        frames = GET_TB(0, ptr)
        self.raws.append([ptr, n])
        how = 'detached' if detached else 'attached'
        self.checks += 1
        check_frames(frames, f'raw block ({how})')
        if tracing and stable(epoch):
            self.checks += 1
            check_allocated_here(frames, f'raw block of {n} bytes ({how})')

    def op_raw_free(self):
        if self.raws:
            ptr, _ = self.raws.pop(self.rng.randrange(len(self.raws)))
            raw_free(ptr, self.rng.random() < 0.5)

    # --- PyTraceMalloc_Track / Untrack

    def op_track(self):
        rng = self.rng
        how = rng.choice(HOWS)
        domain = DOMAIN_BASE + rng.randrange(NDOMAINS)
        size = rng.randint(1, 1 << 20)
        token = object()        # keeps ptr unique in the process
        ptr = id(token)
        epoch = EPOCH
        tracing = tracemalloc.is_tracing()
        rc = track(domain, ptr, size, how)
        frames = GET_TB(domain, ptr)
        self.tracks.append([domain, token, how])
        what = f'PyTraceMalloc_Track(how={how})'
        self.checks += 1
        check_frames(frames, what)
        if how == 2 and not IS_MAIN:
            # No thread state ever attached in that C thread: the block is
            # the main interpreter's, if anybody's.
            self.checks += 1
            if frames is not None:
                violation(f'{what} from a C thread is traced by a '
                          f'subinterpreter: {frames}')
            return
        if not stable(epoch):
            return
        self.checks += 1
        if tracing:
            if rc != 0:
                violation(f'{what} returned {rc} while tracing')
            elif frames is None:
                violation(f'{what} returned 0 but the block is not traced')
            elif how == 2 and frames != (('<unknown>', 0),):
                violation(f'{what} from a C thread has the traceback '
                          f'{frames}, not an empty one')
            elif how != 2 and frames[0][0] != MARK:
                violation(f'{what} has the traceback {frames}')
        elif frames is not None:
            violation(f'{what} while not tracing: traced, {frames}')
        elif (how == 0 or IS_MAIN) and rc != -2:
            # (detached in a subinterpreter, the main one may take it)
            violation(f'{what} while not tracing returned {rc}')

    def op_untrack(self):
        if not self.tracks:
            return
        rng = self.rng
        domain, token, _ = self.tracks.pop(rng.randrange(len(self.tracks)))
        self.untrack(domain, token, rng.choice(HOWS))

    def untrack(self, domain, token, how):
        untrack(domain, id(token), how)
        frames = GET_TB(domain, id(token))
        self.checks += 1
        if frames is not None:
            violation(f'PyTraceMalloc_Untrack(how={how}) left the block '
                      f'traced: {frames}')

    # --- the tracemalloc API

    def op_traced_memory(self):
        more = self.rng.random() < 0.2
        current, peak = tracemalloc.get_traced_memory()
        self.checks += 1
        if peak < current:
            violation(f'get_traced_memory(): peak {peak} < current {current}')
        if more:
            tracemalloc.get_tracemalloc_memory()
            tracemalloc.get_traceback_limit()
            tracemalloc.is_tracing()

    def op_snapshot(self):
        rng = self.rng
        key = rng.choice(('lineno', 'filename', 'traceback'))
        cumulative = key != 'traceback' and rng.random() < 0.3
        try:
            snap = tracemalloc.take_snapshot()
        except RuntimeError:
            self.prev = None    # not tracing
            return
        traces = snap.traces._traces
        self.checks += 1
        bad = foreign_frames(traces)
        if bad:
            violation(f'snapshot with {len(bad)} foreign tracebacks: '
                      f'{bad[:3]}')
        snap.statistics(key, cumulative=cumulative)
        if self.prev is not None:
            snap.compare_to(self.prev, key)
        snap.filter_traces([tracemalloc.Filter(True, MARK_ALLOC),
                            tracemalloc.DomainFilter(False, DOMAIN_BASE)])
        self.prev = snap

    def op_control(self):
        rng = self.rng
        what = rng.choices(('start', 'stop', 'clear', 'reset_peak'),
                           (45, 15, 15, 25))[0]
        nframe = rng.choice(NFRAMES)
        if what == 'reset_peak':
            tracemalloc.reset_peak()
            current, peak = tracemalloc.get_traced_memory()
            self.checks += 1
            if peak < current:
                violation(f'after reset_peak(): peak {peak} < {current}')
            return
        with CTL:
            bump_epoch()
            try:
                control(what, nframe, self)
            finally:
                bump_epoch()

    def op_gc(self):
        gc.collect(self.rng.choice((0, 1, 2)))

    def op_thread(self):
        thread = threading.Thread(target=short_thread,
                                  args=(self.rng.getrandbits(32),))
        thread.start()
        thread.join()

    # --- end of the thread

    def finish(self):
        """Free what the thread allocated, but what it gives to KEEP."""
        rng = self.rng
        self.prev = None
        for item in self.live:
            if rng.random() < 0.1:
                KEEP.append(('obj', item[1]))
        self.live.clear()
        for ptr, _ in self.raws:
            if rng.random() < 0.1:
                KEEP.append(('raw', ptr))
            else:
                raw_free(ptr, rng.random() < 0.5)
        self.raws.clear()
        for domain, token, _ in self.tracks:
            # Keep only the interpreter's own traces: one that went to the
            # main interpreter must be gone when the main one is checked.
            if rng.random() < 0.1 and GET_TB(domain, id(token)) is not None:
                KEEP.append(('track', domain, token))
            else:
                self.untrack(domain, token, rng.choice(HOWS))
        self.tracks.clear()


OPS = [
    (Worker.op_alloc, 30),
    (Worker.op_free, 18),
    (Worker.op_object_traceback, 8),
    (Worker.op_raw_alloc, 8),
    (Worker.op_raw_free, 6),
    (Worker.op_track, 6),
    (Worker.op_untrack, 5),
    (Worker.op_traced_memory, 4),
    (Worker.op_snapshot, 0.4),
    (Worker.op_control, 0.6),
    (Worker.op_gc, 0.2),
    (Worker.op_thread, 0.4),
]
OP_FUNCS = [op for op, _ in OPS]
OP_CUM = [sum(weight for _, weight in OPS[:i + 1]) for i in range(len(OPS))]


# Whether this interpreter may start tracing in this round (--tracing).
MAY_TRACE = True


def control(what, nframe, counter):
    """start(nframe), stop() or clear_traces(), with CTL held."""
    if what == 'start' and not MAY_TRACE:
        return
    if what == 'start':
        was = tracemalloc.is_tracing()
        old = tracemalloc.get_traceback_limit()
        tracemalloc.start(nframe)
        limit = tracemalloc.get_traceback_limit()
        counter.checks += 1
        if not tracemalloc.is_tracing():
            violation('not tracing after start()')
        elif limit != (old if was else nframe):
            violation(f'start({nframe}) (tracing before: {was}, limit '
                      f'{old}): the limit is {limit}')
    elif what == 'stop':
        tracemalloc.stop()
        memory = tracemalloc.get_traced_memory()
        counter.checks += 1
        if tracemalloc.is_tracing() or memory != (0, 0):
            violation(f'after stop(): tracing {tracemalloc.is_tracing()}, '
                      f'traced memory {memory}')
    elif what == 'clear':
        tracemalloc.clear_traces()
    elif what != 'none':
        raise ValueError(what)


def short_thread(seed):
    """A thread that lives for a few allocations."""
    rng = random.Random(seed)
    objs = [ALLOC[rng.choice(('bytes', 'list', 'obj'))](rng.randint(2, 2000))
            for _ in range(10)]
    n = rng.randint(1, 5000)
    ptr = alloc_raw_detached(n if n != STACK_CHUNK_SIZE else n + 1)
    token = object()
    track(DOMAIN_BASE, id(token), 100, 0)
    untrack(DOMAIN_BASE, id(token), 1)
    raw_free(ptr, False)
    del objs


class Counter:
    checks = 0


def free_kept(entries, rng, counter):
    for entry in entries:
        if entry[0] == 'raw':
            raw_free(entry[1], rng.random() < 0.5)
        elif entry[0] == 'track':
            domain, token = entry[1], entry[2]
            how = rng.choice(HOWS)
            untrack(domain, id(token), how)
            counter.checks += 1
            if GET_TB(domain, id(token)) is not None:
                violation(f'PyTraceMalloc_Untrack(how={how}) left the '
                          f'block traced')


def flush_keep(rng, counter):
    """Free everything kept across rounds."""
    entries = KEEP[:]
    KEEP.clear()
    free_kept(entries, rng, counter)


def trim_keep(rng, counter):
    """Free the oldest kept blocks beyond KEEP_MAX."""
    extra = len(KEEP) - KEEP_MAX
    if extra > 0:
        entries = KEEP[:extra]
        del KEEP[:extra]
        free_kept(entries, rng, counter)


def check_quiescent(exact, flushed, counter):
    """Check the invariants that hold when no other thread touches the state.

    exact: nothing else can change this interpreter's traces meanwhile.
    flushed: everything the mix allocated has been freed.
    """
    gc.collect()        # frees cycles, free lists, delayed frees
    gc.collect()
    if not tracemalloc.is_tracing():
        return
    enabled = gc.isenabled()
    gc.disable()        # nothing may be freed between the two reads
    try:
        # The copy of the traces is made before the snapshot's own objects,
        # which are not traced, so nothing is traced or freed between it and
        # the reading of the figures.
        traces, (current, peak) = (_tracemalloc._get_traces(),
                                   _tracemalloc.get_traced_memory())
    finally:
        if enabled:
            gc.enable()
    counter.checks += 2
    if peak < current:
        violation(f'quiescent: peak {peak} < current {current}')
    bad = foreign_frames(traces)
    if bad:
        violation(f'quiescent: {len(bad)} tracebacks with foreign frames: '
                  f'{bad[:3]}')
    if exact:
        counter.checks += 1
        total = sum(trace[1] for trace in traces)
        if total != current:
            violation(f'quiescent: get_traced_memory()[0] is {current} but '
                      f'its {len(traces)} traces sum to {total} '
                      f'(difference {current - total})')
    if flushed:
        counter.checks += 1
        stale = [trace for trace in traces
                 if any(f == MARK_ALLOC for f, _ in trace[2])]
        if FREE_THREADED:
            chunks = [trace for trace in stale
                      if trace[:2] == (0, STACK_CHUNK_SIZE)]
            if len(chunks) <= (STACK_CHUNKS_PER_THREAD
                               * threading.active_count()):
                stale = [trace for trace in stale if trace not in chunks]
        if stale:
            violation(f'{len(stale)} stale traces ({sum(t[1] for t in stale)}'
                      f' bytes) of freed blocks, e.g. {stale[:3]}')
        if exact:
            counter.checks += 1
            stale = [trace for trace in traces
                     if DOMAIN_BASE <= trace[0] < DOMAIN_BASE + NDOMAINS]
            if stale:
                violation(f'{len(stale)} stale traces of untracked blocks, '
                          f'e.g. {stale[:3]}')


def check_leftovers(flushed, counter):
    """Check the leftovers of the destroyed interpreters, every interpreter
    paused: they are no live interpreter's, their totals add up, and once
    everything the mix allocated is freed, none is of the mix.
    """
    rows = tracemalloc.get_interpreters()
    leftovers = tracemalloc.get_leftovers()
    live = {row.id for row in rows if not row.ended}
    ended = {row.id: row for row in rows if row.ended}
    counter.checks += 2
    if live & set(leftovers) or live & set(ended):
        violation(f'leftovers of live interpreters: '
                  f'{sorted(live & (set(leftovers) | set(ended)))}')
    if set(leftovers) != set(ended):
        violation(f'get_leftovers() has {sorted(leftovers)}, '
                  f'get_interpreters() {sorted(ended)}')
    for iid, snapshot in leftovers.items():
        row = ended.get(iid)
        raw = snapshot.traces._traces
        counter.checks += 1
        if row is not None and (len(raw), sum(t[1] for t in raw)) != (
                row.traces, row.traced):
            violation(f'leftovers of {iid}: {len(raw)} traces of '
                      f'{sum(t[1] for t in raw)} bytes, but the row says '
                      f'{row.traces} of {row.traced}')
        if flushed:
            counter.checks += 1
            stale = [t for t in raw
                     if any(f.startswith(MARK_PREFIX) and f.endswith('-alloc>')
                            for f, _ in t[2])]
            if stale:
                violation(f'leftovers of {iid}: {len(stale)} traces of '
                          f'blocks the mix freed, e.g. {stale[:3]}')


def take_violations():
    found = VIOLATIONS[:]
    del VIOLATIONS[:len(found)]
    return len(found), found[:MAX_REPORTED]


def stress_round(params):
    """Run the mix in this interpreter for one round; return its figures.

    Called with no other thread of the interpreter running.
    """
    global MAY_TRACE
    rng = random.Random(params['seed'])
    counter = Counter()
    MAY_TRACE = params['may_trace']
    with CTL:
        bump_epoch()
        try:
            control(params['prologue'], params['nframe'], counter)
        finally:
            bump_epoch()
    deadline = time.monotonic() + params['duration']
    workers = [Worker(tno, rng.getrandbits(32), deadline, params['max_ops'])
               for tno in range(params['nthreads'])]
    threads = [threading.Thread(target=worker.run, name=f'worker-{tno}')
               for tno, worker in enumerate(workers) if tno]
    for thread in threads:
        thread.start()
    workers[0].run()    # also in the thread that runs the interpreter
    for thread in threads:
        thread.join()
    ops = sum(worker.ops for worker in workers)
    counter.checks += sum(worker.checks for worker in workers)
    del workers, threads

    giveaway = []
    flush = params['flush']
    if flush:
        flush_keep(rng, counter)
    else:
        trim_keep(rng, counter)
        if params['giveaway']:
            # Raw blocks for the main interpreter to free, this one alive.
            for i in reversed(range(len(KEEP))):
                if KEEP[i][0] == 'raw' and rng.random() < 0.5:
                    giveaway.append(KEEP.pop(i)[1])
    check_quiescent(params['exact'], flush, counter)
    nviolations, violations = take_violations()
    return {'ops': ops, 'checks': counter.checks, 'giveaway': giveaway,
            'nviolations': nviolations, 'violations': violations,
            'tracing': tracemalloc.is_tracing()}


def finish(params):
    """Prepare the interpreter to be destroyed; return its figures.

    mode 'clean': free everything, check, maybe stop tracing.
    mode 'tracing' or 'alive': keep blocks alive (tracing, or as it is); the
    raw ones are returned to be freed by the main interpreter once this one
    is gone.
    """
    rng = random.Random(params['seed'])
    counter = Counter()
    ptrs = []
    mode = params['mode']
    if mode == 'clean':
        flush_keep(rng, counter)
        check_quiescent(True, True, counter)
        if rng.random() < 0.5:
            tracemalloc.stop()
    else:
        if (mode == 'tracing' and MAY_TRACE
                and not tracemalloc.is_tracing()):
            tracemalloc.start(params['nframe'])
        for i in range(5):
            KEEP.append(('obj', alloc_bytes(1000 + i)))
            KEEP.append(('raw', alloc_raw(100 + i)))
            token = object()
            track(DOMAIN_BASE, id(token), 100, 0)
            KEEP.append(('track', DOMAIN_BASE, token))
        check_quiescent(True, False, counter)
        for entry in KEEP:
            if entry[0] == 'raw':
                ptrs.append(entry[1])
            elif entry[0] == 'track':
                # Leave this interpreter's traces, but no other's.
                domain, token = entry[1], entry[2]
                if GET_TB(domain, id(token)) is None:
                    untrack(domain, id(token), rng.choice(HOWS))
        KEEP[:] = [entry for entry in KEEP if entry[0] != 'raw']
    nviolations, violations = take_violations()
    return {'ops': 0, 'checks': counter.checks, 'giveaway': ptrs,
            'nviolations': nviolations, 'violations': violations,
            'tracing': tracemalloc.is_tracing()}


def pause_check(final, seed):
    """Check the main interpreter while every other thread is blocked.

    What KEEP holds is freed only at the end, once the threads that made it
    are gone: in the free-threaded build, an object whose last reference is
    dropped by a thread other than its owner is freed by the owner, later,
    or by a collection, one level of containment at a time.
    """
    counter = Counter()
    if final:
        flush_keep(random.Random(seed), counter)
    check_quiescent(True, not KEEP, counter)
    check_leftovers(final, counter)
    nviolations, violations = take_violations()
    return {'ops': 0, 'checks': counter.checks, 'giveaway': [],
            'nviolations': nviolations, 'violations': violations,
            'tracing': tracemalloc.is_tracing()}


def entry(func_name, args_json, fd):
    """Run func_name(params) in a subinterpreter; write its result to fd."""
    try:
        result = globals()[func_name](json.loads(args_json))
    except BaseException:
        result = {'error': traceback.format_exc()}
    os.write(fd, (json.dumps(result) + '\n').encode())


# === Driver side ============================================================

SETUP_SCRIPT = """\
ns = {'__name__': '__stress__'}
exec(compile(SRC, MARK, 'exec'), ns)
exec(compile(ASRC, MARK_ALLOC, 'exec'), ns)
ns['interp_init'](ARGS)
_STRESS = ns
del ns, SRC, ASRC
"""

RUN_SCRIPT = "_STRESS['entry'](FUNC, ARGS, FD)"


def load_sources():
    """This file's text, and its ALLOC section alone (same line numbers)."""
    path = os.path.abspath(__file__)
    with open(path, encoding='utf-8') as f:
        src = f.read()
    lines = src.splitlines(keepends=True)
    begin = lines.index('# BEGIN ALLOC\n')
    end = lines.index('# END ALLOC\n')
    asrc = '\n' * begin + ''.join(lines[begin:end])
    return path, src, asrc


def signal_name(signum):
    import signal
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f'signal {signum}'


class Run:
    """The stress run itself, in the child process."""

    def __init__(self, args):
        import _interpreters
        self.interpreters = _interpreters
        self.args = args
        self.master = random.Random(args.seed)
        self.host_file, self.src, self.asrc = load_sources()
        self.lock = threading.Lock()
        # Slots wait for the end of a pause on resumed, the main thread for
        # all slots to be paused on paused, so that it does not wake them.
        self.mutex = threading.Lock()
        self.paused = threading.Condition(self.mutex)
        self.resumed = threading.Condition(self.mutex)
        self.pausing = False
        self.npaused = 0
        self.nrunning = 0
        self.stopping = False
        self.start = time.monotonic()
        self.deadline = self.start + args.seconds
        self.ops = self.checks = self.rounds = 0
        self.created = self.destroyed = 0
        self.nviolations = self.errors = 0
        self.printed = 0
        self.main_ns = self.load_main()

    def load_main(self):
        ns = {'__name__': '__stress__'}
        mark = f'{MARK_PREFIX}0>'
        exec(compile(self.src, mark, 'exec'), ns)
        exec(compile(self.asrc, f'{MARK_PREFIX}0-alloc>', 'exec'), ns)
        ns['interp_init'](json.dumps({'iid': 0, 'is_main': True,
                                      'host_file': self.host_file}))
        return ns

    # --- figures

    def add(self, who, result):
        with self.lock:
            if 'error' in result:
                self.errors += 1
                self.show(f'ERROR in {who}:\n{result["error"]}')
                return
            self.ops += result['ops']
            self.checks += result['checks']
            self.nviolations += result['nviolations']
            for msg in result['violations']:
                self.show(f'VIOLATION {msg}')

    def error(self, who, msg):
        with self.lock:
            self.errors += 1
            self.show(f'ERROR in {who}: {msg}')

    def show(self, msg):
        if self.printed < 30:
            print(msg, file=sys.stderr, flush=True)
        elif self.printed == 30:
            print('(further messages not shown)', file=sys.stderr, flush=True)
        self.printed += 1

    def figures(self, final):
        return {'final': final, 'seconds': time.monotonic() - self.start,
                'ops': self.ops, 'rounds': self.rounds,
                'created': self.created, 'destroyed': self.destroyed,
                'checks': self.checks, 'violations': self.nviolations,
                'errors': self.errors}

    def report(self, final):
        figures = self.figures(final)
        line = json.dumps(figures) + '\n'
        if self.args.result_fd is not None:
            os.write(self.args.result_fd, line.encode())
        if self.args.verbose or (final and self.args.result_fd is None):
            print(summary(figures), file=sys.stderr, flush=True)

    # --- pauses: every slot between two rounds, blocked

    def checkpoint(self):
        if not self.pausing:
            return
        with self.mutex:
            self.npaused += 1
            self.paused.notify()
            while self.pausing:
                self.resumed.wait()
            self.npaused -= 1

    def slot_done(self):
        with self.mutex:
            self.nrunning -= 1
            self.paused.notify()

    def pause(self, rng):
        gc.disable()
        try:
            with self.mutex:
                self.pausing = True
                while self.npaused < self.nrunning:
                    self.paused.wait()
            # The last slot to pause released the mutex in resumed.wait()
            # just before it blocked; let it block.
            time.sleep(0.02)
            result = self.main_ns['pause_check'](False, rng.getrandbits(32))
            self.add('main interpreter (pause)', result)
            with self.lock:
                self.checks += 1
                alive = {iid for iid, *_ in self.interpreters.list_all()}
                expected = {0} | {slot.iid for slot in self.slots
                                  if slot.iid is not None}
            if alive != expected:
                self.error('pause', f'interpreters {sorted(alive)}, '
                           f'expected {sorted(expected)}')
        finally:
            with self.mutex:
                self.pausing = False
                self.resumed.notify_all()
            gc.enable()

    # --- the run

    def main(self):
        import faulthandler
        faulthandler.enable(all_threads=True)
        args = self.args
        self.slots = [MainSlot(self, self.master.getrandbits(64))]
        self.slots += [SubSlot(self, i + 1, self.master.getrandbits(64))
                       for i in range(args.interpreters)]
        self.nrunning = len(self.slots)
        for slot in self.slots:
            slot.start()
        rng = random.Random(self.master.getrandbits(64))
        try:
            while True:
                now = time.monotonic()
                if now >= self.deadline:
                    break
                time.sleep(min(rng.uniform(0.5, 3.0), self.deadline - now))
                if time.monotonic() < self.deadline:
                    self.pause(rng)
                    self.report(False)
        except BaseException:
            import traceback
            self.error('driver', traceback.format_exc())
        finally:
            self.stopping = True
            with self.mutex:
                self.pausing = False
                self.resumed.notify_all()
            for slot in self.slots:
                slot.join()
        # Every subinterpreter is gone: the main interpreter frees all.
        result = self.main_ns['pause_check'](True, rng.getrandbits(32))
        self.add('main interpreter (end)', result)
        self.main_ns['tracemalloc'].stop()
        left = [iid for iid, *_ in self.interpreters.list_all() if iid]
        if left:
            self.error('end', f'interpreters not destroyed: {left}')
        self.report(True)
        return 0 if self.nviolations == 0 and self.errors == 0 else 1


class Slot(threading.Thread):
    """Drives one interpreter after another, round after round."""

    def __init__(self, stress, index, seed):
        super().__init__(name=f'slot-{index}')
        self.stress = stress
        self.index = index
        self.rng = random.Random(seed)
        self.iid = None

    def round_params(self):
        rng = self.rng
        args = self.stress.args
        flush = rng.random() < 0.35
        return {
            'seed': rng.getrandbits(32),
            'nthreads': rng.randint(1, args.threads),
            'duration': rng.uniform(0.05, 0.5),
            'max_ops': rng.randint(100, 5000),
            'prologue': rng.choices(('none', 'start', 'stop', 'clear'),
                                    (50, 35, 8, 7))[0],
            'nframe': rng.choice(NFRAMES),
            'flush': flush,
            'giveaway': not flush and rng.random() < 0.3,
            'exact': True,
            'may_trace': (self.stress.args.tracing == 'all'
                          or self.index % 2 == 0),
        }

    def run(self):
        run = self.stress
        try:
            while not run.stopping:
                run.checkpoint()
                if run.stopping:
                    break
                self.step()
                with run.lock:
                    run.rounds += 1
            self.close()
        except BaseException:
            import traceback
            run.error(self.name, traceback.format_exc())
        finally:
            run.slot_done()


class MainSlot(Slot):
    """The main interpreter's rounds: checked exactly only when paused."""

    def __init__(self, stress, seed):
        super().__init__(stress, 0, seed)

    def step(self):
        params = self.round_params()
        params['exact'] = False     # other interpreters may add traces
        params['giveaway'] = False
        result = self.stress.main_ns['stress_round'](params)
        self.stress.add('main interpreter', result)

    def close(self):
        pass


class SubSlot(Slot):
    """Subinterpreters, created and destroyed along the way."""

    def __init__(self, stress, index, seed):
        super().__init__(stress, index, seed)
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)
        self.buffer = b''

    def exec(self, script, shared):
        interpreters = self.stress.interpreters
        excinfo = interpreters.run_string(self.iid, script, shared=shared)
        if excinfo is not None:
            self.stress.error(f'interpreter {self.iid}', excinfo.errdisplay)
            return None
        while True:
            try:
                data = os.read(self.rfd, 1 << 16)
            except BlockingIOError:
                break
            if not data:
                break
            self.buffer += data
        line, sep, self.buffer = self.buffer.partition(b'\n')
        if not sep:
            self.stress.error(f'interpreter {self.iid}', 'no result')
            return None
        result = json.loads(line)
        self.stress.add(f'interpreter {self.iid}', result)
        return result

    def call(self, func, params):
        shared = {'FUNC': func, 'ARGS': json.dumps(params), 'FD': self.wfd}
        return self.exec(RUN_SCRIPT, shared)

    def create(self):
        run = self.stress
        rng = self.rng
        interpreters = run.interpreters
        if rng.random() < 0.6:
            self.iid = interpreters.create()
        else:
            self.iid = interpreters.create(interpreters.new_config('legacy'))
        with run.lock:
            run.created += 1
        self.rounds_left = rng.randint(1, 6)
        args = {'iid': self.iid, 'is_main': False,
                'host_file': run.host_file}
        excinfo = interpreters.run_string(self.iid, SETUP_SCRIPT, shared={
            'SRC': run.src, 'ASRC': run.asrc,
            'MARK': f'{MARK_PREFIX}{self.iid}>',
            'MARK_ALLOC': f'{MARK_PREFIX}{self.iid}-alloc>',
            'ARGS': json.dumps(args)})
        if excinfo is not None:
            run.error(f'interpreter {self.iid} setup', excinfo.errdisplay)
            self.destroy([])

    def free(self, ptrs):
        """Free raw blocks of another interpreter, here in the main one."""
        ns = self.stress.main_ns
        for ptr in ptrs:
            ns['raw_free'](ptr, self.rng.random() < 0.5)

    def step(self):
        if self.iid is None:
            self.create()
            if self.iid is None:
                return
        result = self.call('stress_round', self.round_params())
        if result is not None:
            self.free(result.get('giveaway', ()))
        self.rounds_left -= 1
        if self.rounds_left == 0:
            self.close()

    def close(self):
        if self.iid is None:
            return
        rng = self.rng
        params = {'seed': rng.getrandbits(32),
                  'mode': rng.choice(('clean', 'tracing', 'alive')),
                  'nframe': rng.choice(NFRAMES)}
        result = self.call('finish', params)
        self.destroy(() if result is None else result.get('giveaway', ()))

    def destroy(self, ptrs):
        run = self.stress
        run.interpreters.destroy(self.iid)
        self.iid = None
        with run.lock:
            run.destroyed += 1
        self.free(ptrs)     # blocks that outlived their interpreter


def summary(figures, outcome=None):
    text = (f"stress: seconds={figures['seconds']:.1f} ops={figures['ops']} "
            f"interpreters created={figures['created']} "
            f"destroyed={figures['destroyed']} checks={figures['checks']} "
            f"violations={figures['violations']} errors={figures['errors']}")
    if outcome is not None:
        text += f' result={outcome}'
    return text


def run_child(args):
    """Run the stress in a child process and watch it."""
    import subprocess
    import signal

    rfd, wfd = os.pipe()
    cmd = [sys.executable, '-X', 'faulthandler', os.path.abspath(__file__),
           '--child', '--result-fd', str(wfd), '--seed', str(args.seed),
           '--seconds', str(args.seconds),
           '--interpreters', str(args.interpreters),
           '--threads', str(args.threads), '--tracing', args.tracing]
    if args.verbose:
        cmd.append('--verbose')
    start = time.monotonic()
    proc = subprocess.Popen(cmd, pass_fds=(wfd,))
    os.close(wfd)

    reports = []

    def read_reports():
        with os.fdopen(rfd, 'rb') as f:
            for line in f:
                try:
                    reports.append(json.loads(line))
                except ValueError:
                    pass

    reader = threading.Thread(target=read_reports, daemon=True)
    reader.start()
    hung = False
    try:
        returncode = proc.wait(args.seconds + args.grace)
    except subprocess.TimeoutExpired:
        hung = True
        # faulthandler dumps the Python tracebacks on SIGABRT
        proc.send_signal(signal.SIGABRT)
        try:
            returncode = proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            returncode = proc.wait()
    reader.join(10)

    figures = reports[-1] if reports else {
        'ops': 0, 'created': 0, 'destroyed': 0, 'checks': 0,
        'violations': 0, 'errors': 0}
    figures = dict(figures, seconds=time.monotonic() - start)
    final = bool(reports) and reports[-1].get('final')
    if hung:
        outcome, status = (f'HANG (no end after {args.seconds + args.grace:g}'
                           f' s; killed)'), 3
    elif returncode < 0:
        outcome, status = f'CRASH (killed by {signal_name(-returncode)})', 2
    elif not final:
        outcome, status = f'ERROR (exit status {returncode}, no result)', 2
    elif figures['violations']:
        outcome, status = 'VIOLATIONS', 1
    elif figures['errors'] or returncode:
        outcome, status = f'ERROR (exit status {returncode})', 2
    else:
        outcome, status = 'ok', 0
    print(summary(figures, outcome), flush=True)
    if status:
        print(f'reproduce: {sys.executable} {os.path.abspath(__file__)} '
              f'--seed {args.seed} --seconds {args.seconds:g} '
              f'--interpreters {args.interpreters} --threads {args.threads} '
              f'--tracing {args.tracing}', flush=True)
    return status


def parse_args(argv=None):
    import argparse
    title, _usage, *rest = __doc__.split('\n\n')
    parser = argparse.ArgumentParser(
        description='\n\n'.join([title, *rest]),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seconds', type=float, default=60,
                        help='how long the random mix runs (default: 60)')
    parser.add_argument('--seed', type=int, default=None,
                        help='seed of the random mix (default: random)')
    parser.add_argument('--interpreters', type=int, default=4,
                        help='subinterpreters alive at once, besides the '
                             'main one (default: 4)')
    parser.add_argument('--threads', type=int, default=4,
                        help='threads per interpreter and round, at most '
                             '(default: 4)')
    parser.add_argument('--tracing', choices=('all', 'some'), default='all',
                        help='which interpreters may start tracing: all, or '
                             'the main one and every other subinterpreter '
                             'slot (default: all)')
    parser.add_argument('--grace', type=float, default=60,
                        help='seconds allowed past --seconds before the run '
                             'counts as hung (default: 60)')
    parser.add_argument('--verbose', action='store_true',
                        help='print the figures at every pause')
    parser.add_argument('--child', action='store_true',
                        help='run the stress in this process, unwatched '
                             '(for debuggers)')
    parser.add_argument('--result-fd', type=int, default=None,
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.seconds <= 0 or args.interpreters < 0 or args.threads < 1:
        parser.error('--seconds must be > 0, --interpreters >= 0 and '
                     '--threads >= 1')
    if args.seed is None:
        args.seed = int.from_bytes(os.urandom(4), 'big')
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        if args.result_fd is None:
            print(f'seed={args.seed}', flush=True)
        return Run(args).main()
    print(f'seed={args.seed}', flush=True)
    return run_child(args)


if __name__ == '__main__':
    sys.exit(main())
