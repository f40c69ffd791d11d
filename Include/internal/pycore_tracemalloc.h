#ifndef Py_INTERNAL_TRACEMALLOC_H
#define Py_INTERNAL_TRACEMALLOC_H
#ifdef __cplusplus
extern "C" {
#endif

#ifndef Py_BUILD_CORE
#  error "this header requires Py_BUILD_CORE define"
#endif

#include "pycore_hashtable.h"     // _Py_hashtable_t


/* tracemalloc keeps one state per interpreter (interp->tracemalloc): each
   interpreter traces on its own, into its own tables, and only ever holds
   references to its own objects.  What is truly process-wide lives in
   _PyRuntime.tracemalloc: the original allocators that the hooks wrap, and
   the registry of tracing interpreters that keeps the hooks installed.

   Lock order (a thread holding one of these may only take those below it):

       1. _PyRuntime.tracemalloc.hooks_mutex   start/stop only, may detach
       2. _PyRuntime.tracemalloc.mutex         the registry
       3. the lock of stripe i of interp       one stripe of an interpreter's
                                               traces (free-threaded build;
                                               several: in the order of i)
       4. interp->tracemalloc.mutex            the rest of its tables

   Locks 2 to 4 are taken by the allocator hooks, so waiting for them
   never detaches the thread state (_Py_LOCK_DONT_DETACH), and they are
   never held across anything that can detach the thread state, call Python
   code, or allocate through the hooked allocators (tracemalloc allocates
   its own memory with the original raw allocator).  The locks of one
   interpreter only are held at a time, except by a thread about to fork
   (_PyTraceMalloc_BeforeFork()), which takes them all: the others never
   wait for anything while holding one.

   "The state's locks" below means all of 3 and 4: whoever holds them has
   the interpreter's tables to itself.  The default build has a single
   stripe, whose lock is the state's mutex. */


/* Trace memory blocks allocated by PyMem_RawMalloc() */
#define TRACE_RAW_MALLOC


/* Pack the frame_t structure to reduce the memory footprint on 64-bit
   architectures: 12 bytes instead of 16. */
#if defined(_MSC_VER)
#pragma pack(push, 4)
#endif

struct
#ifdef __GNUC__
__attribute__((packed))
#endif
tracemalloc_frame {
    /* filename cannot be NULL: "<unknown>" is used if the Python frame
       filename is NULL */
    PyObject *filename;
    unsigned int lineno;
};
#ifdef _MSC_VER
#pragma pack(pop)
#endif

struct tracemalloc_traceback {
    Py_uhash_t hash;
    /* Number of frames stored */
    uint16_t nframe;
    /* Total number of frames the traceback had */
    uint16_t total_nframe;
    /* Index in the interned tracebacks' by_index array, which is what a
       trace stores; 0 is the empty traceback */
    uint32_t index;
    struct tracemalloc_frame frames[1];
};


/* The interned tracebacks and filenames of one interpreter.  Reference
   counted so that a snapshot being converted to Python objects keeps the
   tracebacks it points to alive while clear_traces() or stop() runs. */
struct tracemalloc_interned {
    /* Owners: the interpreter state, plus each conversion in progress.
       Protected by the interpreter's mutex. */
    Py_ssize_t refcnt;
    /* The set of the interned tracebacks: their indexes in by_index, in
       an open addressing table of tracebacks_capacity slots (a power of
       two, at most 3/4 full), 0 in an empty one.  Index 0, the empty
       traceback, is never in it.  Protected by the interpreter's mutex
       while the interpreter state owns it; immutable once it does not. */
    uint32_t *tracebacks;
    uint32_t tracebacks_capacity;
    /* filename (str) => NULL (a set holding a strong reference to each
       filename).  Same protection as tracebacks. */
    _Py_hashtable_t *filenames;
    /* index => traceback: by_index[i]->index == i.  Same protection. */
    struct tracemalloc_traceback **by_index;
    uint32_t nindex;
    uint32_t index_capacity;
};


/* A spinlock: taken with an atomic compare-and-exchange, released with a
   store, where PyMutex_Unlock() needs a compare-and-exchange too to learn
   whether a waiter is parked.  A waiter spins a little, then yields the
   CPU, then sleeps.  Python/tracemalloc.c has its functions. */
typedef struct {
    int locked;                 /* 1 while held */
} _PyTraceMalloc_SpinLock;

/* The lock of one interpreter's tables (lock 3 above).

   The free-threaded build, whose threads contend, uses a PyMutex (its
   stripes, a _PyTraceMalloc_SpinLock each).

   In the default build, the interpreter's own threads take it one at a
   time, since they hold its GIL; only threads from outside (with no thread
   state, or of another interpreter freeing one of its blocks) can contend
   with them, and seldom do.  The lock is biased towards the GIL holder
   ("the owner"), which then enters with plain stores and loads: the atomic
   compare-and-exchange of a spinlock was a third of the cost of tracing a
   block.  A thread from outside revokes the bias first, which costs it a
   process-wide memory barrier (membarrier() on Linux); the owner takes
   the spinlock too until it biases the lock again, after REBIAS_AFTER
   critical sections of its own.  Python/tracemalloc.c gives the protocol.
   Where the barrier is not available, the lock is never biased. */
#ifdef Py_GIL_DISABLED
typedef PyMutex _PyTraceMalloc_Lock;
#else
typedef struct {
    /* Held by a thread from outside, or by the owner while the lock is not
       biased. */
    _PyTraceMalloc_SpinLock spin;
    /* Non-zero while the lock is biased: the owner enters by setting busy.
       Set by the owner and cleared by an outsider, both holding locked. */
    int biased;
    /* Non-zero while the owner is in a critical section entered without
       the spinlock.  Written by the owner only; an outsider that revoked
       the bias waits until it reads 0. */
    int busy;
    /* Non-zero while the owner holds locked.  Read and written by the
       owner only (its GIL protects it). */
    int owner_locked;
    /* Critical sections the owner entered with the spinlock since the
       bias was revoked.  Protected by locked. */
    unsigned int unbiased_runs;
} _PyTraceMalloc_Lock;
#endif


/* The free-threaded build splits the traces of an interpreter into
   stripes, so that its threads trace without contending: each stripe has
   its own lock, traces table and capture cache.  A thread traces into the
   stripe of the segment of 32 MiB of address space its block lies in,
   which is the stripe of the thread that first traced a block there:
   mimalloc gives each thread segments of its own, so each thread traces
   into its own stripe, and a single thread into one, as in the default
   build, whose threads take turns, and which has one stripe. */
#ifdef Py_GIL_DISABLED
#  define _PyTraceMalloc_NSTRIPES 16
#  define _PyTraceMalloc_NSEGMENTS 1024
#else
#  define _PyTraceMalloc_NSTRIPES 1
#endif

struct tracemalloc_stripe {
#ifdef Py_GIL_DISABLED
    /* Protects the fields below.  Held for a few hundred instructions by
       the hooks, and mostly by the thread the stripe is for: a spinlock
       costs them one atomic operation per block where a PyMutex costs
       two. */
    _PyTraceMalloc_SpinLock lock;
    /* Size in bytes of the blocks traced in the stripe (of every domain),
       and what it was when last added to the state's traced_memory. */
    size_t traced_memory;
    size_t flushed_memory;
#endif
    /* pointer => (size, traceback) of the stripe's blocks of the default
       domain; NULL until one is traced (the first stripe's is made when
       the session starts).  In the default build, protected by the state's
       mutex. */
    struct tracemalloc_traces *traces;
    /* The capture cache of the threads that allocate in the stripe (see
       Python/tracemalloc_capture.h), made as traces is.  Same
       protection. */
    struct tracemalloc_capture_cache *cache;
#ifdef Py_GIL_DISABLED
    /* A cache line of its own */
    char padding[64 - 5 * sizeof(void *)];
#endif
};


/* One interpreter's tracemalloc state: interp->tracemalloc. */
struct _tracemalloc_interp_state {
    /* Protects every field below but the stripes, whose locks protect
       them.  The fields changed only with all of the state's locks held
       (see the lock order) may be read under any one of them. */
    _PyTraceMalloc_Lock mutex;

    /* Non-zero while the interpreter traces.  Written under the state's
       locks and the runtime mutex (the registry changes with it); the
       hooks read it without a lock as a hint and check it again under the
       lock of a stripe. */
    int tracing;

    /* The tag of the current (or last) tracing session in the owner map
       (see Python/tracemalloc.c): unique among the sessions whose traces
       it may still count.  Set under the mutex and the registry mutex when
       the session starts; the free path reads it without a lock, and any
       tag of this interpreter's sessions serves it equally. */
    uint32_t owner_tag;

    /* Traceback limit of the current (or last) tracing session; 0 until
       the interpreter first starts tracing, which reads as the default 1.
       Written under the state's locks. */
    int max_nframe;

    /* Size in bytes of currently traced memory, and its peak.  In the
       free-threaded build, traced_memory is the sum of what the stripes
       added to it (their flushed_memory), which they do once theirs has
       changed by 64 KiB since, with an atomic add; the stripes raise
       peak_traced_memory, atomically too, to the highest sum they see. */
    size_t traced_memory;
    size_t peak_traced_memory;

    /* Bumped by _PyTraceMalloc_ForgetCode(), atomically and without the
       mutex, each time a code object of the interpreter dies: the cache is
       keyed by code object addresses, which may then be reused. */
    uint64_t code_epoch;

    /* Bumped each time the tables below are replaced (start, stop,
       clear_traces()), under the state's locks: a trace dropped from them
       is put back only into the same ones. */
    uint64_t generation;

    /* Interned tracebacks and filenames; one reference is the state's.
       Replaced under the state's locks. */
    struct tracemalloc_interned *interned;

    /* domain (unsigned int) => traces (struct tracemalloc_traces*) of the
       other domains.  Replaced under the state's locks. */
    _Py_hashtable_t *domains;

    /* The traces of the default domain and the capture caches. */
#ifdef Py_GIL_DISABLED
    /* The stripes start at the first cache line boundary in stripe_space
       (state_stripe() in Python/tracemalloc.c): an interpreter state is
       only as aligned as malloc() makes it, and two stripes that share a
       cache line have their threads take it from each other on every
       block they trace or free. */
    struct tracemalloc_stripe stripe_space[_PyTraceMalloc_NSTRIPES + 1];
#else
    struct tracemalloc_stripe stripes[_PyTraceMalloc_NSTRIPES];
#endif

#ifdef Py_GIL_DISABLED
    /* The stripe of each segment, plus one, or 0 if no block was traced
       there yet; by the segment's number modulo _PyTraceMalloc_NSEGMENTS
       (segments that far apart share a stripe).  Set once, with an atomic
       compare-and-exchange, and kept for the interpreter's life: a trace
       is always in the stripe of its segment. */
    uint8_t segment_stripes[_PyTraceMalloc_NSEGMENTS];
#endif
};


/* The process-wide part: _PyRuntime.tracemalloc. */
struct _tracemalloc_runtime_state {
    /* Serialises start and stop, which install and remove the hooks.
       Never taken by the hooks, so it may be held while detaching. */
    PyMutex hooks_mutex;

    /* Protects the registry below. */
    PyMutex mutex;

    /* The allocators the hooks wrap.  raw is saved by _PyTraceMalloc_Init()
       and all three when the hooks are installed, under hooks_mutex; the
       hooks read them without a lock, which is safe because they do not
       change while the hooks are installed. */
    struct {
        PyMemAllocatorEx mem;
        PyMemAllocatorEx raw;
        PyMemAllocatorEx obj;
    } allocators;

    /* The states of the tracing interpreters.  Protected by mutex. */
    Py_ssize_t ntracing;
    /* ntracing, plus one while there are leftovers: the hooks are
       installed while it is non-zero, for the frees of leftover blocks
       must be seen too.  Changed under mutex with ntracing, within a
       registry change; read without a lock, as a hint, by the hooks. */
    Py_ssize_t nusers;
    /* Odd while a state joins or leaves the registry (with its tracing
       flag).  Changed under mutex, atomically; the hooks read it without a
       lock to read ntracing and a tracing flag together (a seqlock). */
    uint64_t generation;
    Py_ssize_t capacity;
    struct _tracemalloc_interp_state **tracing;

    /* Non-zero while the hooks wrap PyMem's debug hooks, which may report
       a block being freed as damaged, with the trace the hooks have just
       dropped.  Written under hooks_mutex when the hooks are installed;
       read by the hooks without a lock. */
    int debug_hooks;

    /* Non-zero while the hooks are installed: object creation
       (new_reference() in Objects/object.c) then calls
       _PyTraceMalloc_OnNewReference().  Not the reference tracer of
       PyRefTracer_SetTracer(), which stays the user's, and which would be
       called for every object destroyed too.  Written under hooks_mutex;
       read without a lock. */
    int new_references;

    /* How many untracks looked beyond the calling interpreter, under the
       registry lock: for the tests.  Atomic. */
    uint64_t lookups_elsewhere;

    /* The tag given to the last tracing session.  Protected by mutex. */
    uint32_t last_owner_tag;

    /* What the interpreters that ended while tracing left behind: one set
       of leftover traces per interpreter, oldest first (see
       Python/tracemalloc.c).  Protected by mutex, like the counts below:
       the sets, the traces left in them, and what was dropped to keep
       within the caps. */
    struct tracemalloc_leftovers *leftovers;
    struct tracemalloc_leftovers *last_leftovers;
    Py_ssize_t nleftovers;
    size_t leftover_traces;
    size_t dropped_leftovers;
    size_t dropped_leftover_traces;

    /* "<unknown>" line 0: the traceback of a block allocated with no
       Python frame.  Immutable once _PyTraceMalloc_Init() has run. */
    struct tracemalloc_traceback empty_traceback;
};

#define _tracemalloc_runtime_state_INIT \
    { \
        .ntracing = 0, \
    }


/* The block this thread allocated or reallocated last through the hooks,
   until it becomes an object or this thread frees it (size 0: none).  The
   hooks set it (Python/tracemalloc.c); object creation reads it. */
struct _PyTraceMalloc_last_block {
    uintptr_t start;
    size_t size;
};
extern _Py_thread_local struct _PyTraceMalloc_last_block
    _PyTraceMalloc_last_allocated;

/* The slow path of _PyTraceMalloc_OnNewReference(). */
extern void _PyTraceMalloc_NewReference(PyObject *op);

/* Called by new_reference() in Objects/object.c for each object created
   while the hooks are installed.  Most objects are created in the block
   this thread has just allocated, with no Python code run in between:
   their trace, or the lack of one, is already right, and they cost a
   compare here, inline, where a call would save registers.  A block
   taken from a free list, allocated again without a call to the
   allocator, is the case the slow path is for: it gets a new traceback.
   The block's range says whether op is in it: blocks do not overlap, and
   an object lies inside its own, after its pre-header. */
static inline void
_PyTraceMalloc_OnNewReference(PyObject *op)
{
    struct _PyTraceMalloc_last_block *last = &_PyTraceMalloc_last_allocated;
    if ((uintptr_t)op - last->start < last->size) {
        last->size = 0;
        return;
    }
    _PyTraceMalloc_NewReference(op);
}


// Get the traceback where a memory block was allocated, in the calling
// interpreter.
//
// Return a tuple of (filename: str, lineno: int) tuples.
//
// Return None if the calling interpreter does not trace or if the memory
// block is not tracked by it.
//
// Raise an exception and return NULL on error.
//
// Export for '_testinternalcapi' shared extension.
PyAPI_FUNC(PyObject*) _PyTraceMalloc_GetTraceback(
    unsigned int domain,
    uintptr_t ptr);

/* The functions below act on the calling interpreter's state only. */

/* Return non-zero if tracemalloc is tracing */
extern int _PyTraceMalloc_IsTracing(void);

/* Clear the tracemalloc traces */
extern void _PyTraceMalloc_ClearTraces(void);

/* Get the traces as a list of (domain, size, traceback, total_nframe) */
extern PyObject* _PyTraceMalloc_GetTraces(void);

/* Get the traceback of an object */
extern PyObject* _PyTraceMalloc_GetObjectTraceback(PyObject *obj);

/* Initialize the process-wide part of tracemalloc */
extern PyStatus _PyTraceMalloc_Init(void);

/* Start tracemalloc */
extern int _PyTraceMalloc_Start(int max_nframe);

/* Stop tracemalloc */
extern void _PyTraceMalloc_Stop(void);

/* Get the tracemalloc traceback limit */
extern int _PyTraceMalloc_GetTracebackLimit(void);

/* Get the memory usage of tracemalloc in bytes */
extern size_t _PyTraceMalloc_GetMemory(void);

/* Get the current size and peak size of traced memory blocks as a 2-tuple */
extern PyObject* _PyTraceMalloc_GetTracedMemory(void);

/* Set the peak size of traced memory blocks to the current size */
extern void _PyTraceMalloc_ResetPeak(void);

/* A code object of the calling interpreter is being deallocated */
extern void _PyTraceMalloc_ForgetCode(void);

/* The calling interpreter ends (Py_EndInterpreter()): stop tracing, and
   keep the traces still there as its leftovers. */
extern void _PyTraceMalloc_EndInterpreter(void);

/* Once the interpreter interp_id is deleted, write to stderr a summary of
   its leftovers and their top largest tracebacks, if it left any.  Needs
   no thread state. */
extern void _PyTraceMalloc_ReportLeftovers(int64_t interp_id, int top);

/* The leftovers of the ended interpreters as a dict: interpreter id =>
   (traceback_limit, traces), the traces as _PyTraceMalloc_GetTraces()
   makes them.  Callable from any interpreter. */
extern PyObject* _PyTraceMalloc_GetLeftovers(void);

/* Forget the leftovers of every ended interpreter. */
extern void _PyTraceMalloc_ClearLeftovers(void);

/* A list of (id, traceback_limit, traced, peak, traces, tracemalloc_memory,
   ended) tuples: one per tracing interpreter, then one per ended
   interpreter with leftovers.  Callable from any interpreter. */
extern PyObject* _PyTraceMalloc_GetInterpreters(void);

/* Forget an interpreter that is being deleted: a safety net for
   interpreters deleted without Py_EndInterpreter(), which stops tracing. */
extern void _PyTraceMalloc_ForgetInterpreter(PyInterpreterState *interp);

/* fork(): take every lock of tracemalloc before, so that the child gets
   consistent tables; release them after, in the parent, and in the child,
   where only the main interpreter survives, forget the others. */
extern void _PyTraceMalloc_BeforeFork(void);
extern void _PyTraceMalloc_AfterFork_Parent(void);
extern void _PyTraceMalloc_AfterFork_Child(void);

/* For _testinternalcapi: take or release the lock of the registry of
   tracing interpreters (with no thread state needed), and read how many
   untracks looked beyond the calling interpreter, and whether the lock of
   the calling interpreter's tables is biased (-1: it never is here). */
PyAPI_FUNC(void) _PyTraceMalloc_LockRegistryForTesting(int lock);
PyAPI_FUNC(uint64_t) _PyTraceMalloc_GetLookupsElsewhere(void);
PyAPI_FUNC(int) _PyTraceMalloc_LockBiasedForTesting(void);

/* For _testinternalcapi: the stripe of the calling interpreter that the
   trace of a block at ptr goes to, or -1 if its segment has none yet. */
PyAPI_FUNC(int) _PyTraceMalloc_StripeForTesting(uintptr_t ptr);

/* For _testinternalcapi: the traces table of Python/tracemalloc_table.h
   on its own.  Set, get and pop return as traces_set(), traces_get() and
   traces_pop() do; check returns 0 if the table's invariants hold, else
   -1 and says which one does not in *what. */
typedef void (*_PyTraceMalloc_TableVisitor)(void *arg, uintptr_t ptr,
                                            size_t size, uint32_t traceback);
PyAPI_FUNC(struct tracemalloc_traces *) _PyTraceMalloc_TableNew(void);
PyAPI_FUNC(void) _PyTraceMalloc_TableDestroy(struct tracemalloc_traces *t);
PyAPI_FUNC(int) _PyTraceMalloc_TableSet(
    struct tracemalloc_traces *t, uintptr_t ptr, size_t size,
    uint32_t traceback, size_t *old_size);
PyAPI_FUNC(int) _PyTraceMalloc_TableGet(
    struct tracemalloc_traces *t, uintptr_t ptr, size_t *size,
    uint32_t *traceback);
PyAPI_FUNC(int) _PyTraceMalloc_TablePop(
    struct tracemalloc_traces *t, uintptr_t ptr, size_t *size,
    uint32_t *traceback);
PyAPI_FUNC(size_t) _PyTraceMalloc_TableCount(struct tracemalloc_traces *t);
PyAPI_FUNC(size_t) _PyTraceMalloc_TableMemory(struct tracemalloc_traces *t);
PyAPI_FUNC(void) _PyTraceMalloc_TableForEach(
    struct tracemalloc_traces *t, _PyTraceMalloc_TableVisitor visit,
    void *arg);
PyAPI_FUNC(int) _PyTraceMalloc_TableCheck(struct tracemalloc_traces *t,
                                          const char **what);

#ifdef __cplusplus
}
#endif
#endif  // !Py_INTERNAL_TRACEMALLOC_H
