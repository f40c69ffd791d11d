/* tracemalloc: trace memory blocks allocated by Python, per interpreter.

   Each interpreter has its own state (interp->tracemalloc, declared with
   its locking rules in pycore_tracemalloc.h): whether it traces, its frame
   limit, its traces, its interned tracebacks and filenames, its counters.
   The allocator hooks are process-wide, so they are installed while at
   least one interpreter traces, and each call decides which interpreter, if
   any, the block belongs to:

   - A block belongs to the interpreter whose thread state is attached when
     it is allocated, if that interpreter traces.
   - With no attached thread state (PyMem_RawMalloc() from a thread that
     released the GIL, or from a C thread), it belongs to the interpreter
     last seen attached in this thread, if that interpreter still traces
     (else to nobody): with the frames of the thread state bound to the
     thread (PyGILState_GetThisThreadState()) when that one belongs to the
     same interpreter, else with an empty traceback.  A thread never seen
     attached (one Python did not create) allocates for the main
     interpreter, if it traces, with an empty traceback.  No thread state
     is ever created or attached, and the GIL is never taken.
   - A free drops the trace from whichever interpreter owns the block: the
     calling interpreter is looked at first, the other tracing interpreters
     only when that fails, then the leftovers of the interpreters that
     ended while tracing (see "Leftovers").

   The unit is split by #include, as Python/thread.c is:
   tracemalloc_table.h is the traces table (pointer => size and
   traceback), tracemalloc_capture.h captures and interns tracebacks.
   This file attributes blocks to interpreters and holds the hooks, the
   registry of tracing interpreters, their lifecycle, the leftovers and
   the conversion of traces to Python objects. */

#include "Python.h"
#include "pycore_bitutils.h"      // _Py_popcount32()
#include "pycore_fileutils.h"     // _Py_write_noraise()
#include "pycore_hashtable.h"     // _Py_hashtable_t
#include "pycore_initconfig.h"    // _PyStatus_NO_MEMORY()
#include "pycore_interp.h"        // PyInterpreterState.tracemalloc
#include "pycore_lock.h"          // PyMutex_LockFlags()
#include "pycore_object.h"        // _PyType_PreHeaderSize()
#include "pycore_pymem.h"         // _PyMem_DebugEnabled()
#include "pycore_pystate.h"       // _PyThreadState_GET()
#include "pycore_runtime.h"       // _Py_ID()
#include "pycore_traceback.h"     // _Py_DumpASCII()
#include "pycore_tracemalloc.h"
#include "pycore_tstate.h"        // _PyThreadStateImpl
#include <pycore_frame.h>

#include <stdarg.h>               // va_list
#include <stdlib.h>               // malloc()
#ifdef MS_WINDOWS
#  include <windows.h>            // Sleep()
#else
#  include <sched.h>              // sched_yield()
#  include <time.h>               // nanosleep()
#endif
#ifndef Py_GIL_DISABLED
#  if defined(__linux__) && defined(__has_include)
#    if __has_include(<linux/membarrier.h>)
#      include <linux/membarrier.h>   // MEMBARRIER_CMD_PRIVATE_EXPEDITED
#      include <sys/syscall.h>        // __NR_membarrier
#      include <unistd.h>             // syscall()
#      ifdef __NR_membarrier
#        define HAVE_MEMBARRIER
#      endif
#    endif
#  endif
#endif

_Py_DECLARE_STR(anon_unknown, "<unknown>");

#define runtime_state (_PyRuntime.tracemalloc)
#define allocators (_PyRuntime.tracemalloc.allocators)

#define TO_PTR(key) ((const void *)(uintptr_t)(key))
#define FROM_PTR(key) ((uintptr_t)(key))

/* A slow path, out of line, and out of the way of the hot code: GCC and
   clang place the function, and the blocks that lead to a call of it,
   apart from the rest, so that tracing takes fewer lines of the
   instruction cache. */
#if defined(__GNUC__)
#  define TM_SLOW_PATH __attribute__((cold, noinline))
#else
#  define TM_SLOW_PATH Py_NO_INLINE
#endif

#define DEFAULT_DOMAIN 0
#define DEFAULT_NFRAME 1

typedef struct tracemalloc_frame frame_t;
typedef struct tracemalloc_traceback traceback_t;
typedef struct _tracemalloc_interp_state tm_state_t;
typedef struct tracemalloc_interned interned_t;

#define TRACEBACK_SIZE(NFRAME) \
        (sizeof(traceback_t) + sizeof(frame_t) * (NFRAME - 1))

/* The maximum number of frames is either:
 - The maximum number of frames we can store in `traceback_t.nframe`
 - The maximum memory size_t we can allocate */
static const unsigned long MAX_NFRAME = Py_MIN(UINT16_MAX, ((SIZE_MAX - sizeof(traceback_t)) / sizeof(frame_t) + 1));


typedef struct tracemalloc_traces traces_t;
typedef struct tracemalloc_stripe stripe_t;

#define NSTRIPES _PyTraceMalloc_NSTRIPES
/* The first stripe's traces table and capture cache are made with the
   session, and replaced with it; the others' are made when first used
   (so there are none to make in the default build). */
#define STRIPE_IS_LAZY (NSTRIPES > 1)
#ifdef Py_GIL_DISABLED
#define STRIPE_ALIGNMENT 64
static_assert(sizeof(stripe_t) == STRIPE_ALIGNMENT, "a stripe is a cache line");
#endif

/* Stripe i of state: in the free-threaded build, each on a cache line of
   its own (see stripe_space). */
static inline stripe_t *
state_stripe(tm_state_t *state, int i)
{
    assert(0 <= i && i < NSTRIPES);
#ifdef Py_GIL_DISABLED
    stripe_t *first = _Py_ALIGN_UP(state->stripe_space, STRIPE_ALIGNMENT);
    return first + i;
#else
    return &state->stripes[i];
#endif
}

/* A trace that the hooks dropped before the allocator saw its block: kept
   to be put back if a realloc() fails, and for the debug hooks to report
   if the free or realloc() finds the block damaged. */
typedef struct {
    tm_state_t *state;          /* whose trace it was; NULL if nobody's */
    uint64_t generation;        /* of state's tables then */
    interned_t *interned;       /* where its traceback is */
    size_t size;
    uint32_t traceback;
} dropped_t;




/* What an interpreter that ended while tracing left behind: the traces
   still there after its finalization, its leftovers.  They are kept, with
   their tables as they were, until freed or cleared, so that one can learn
   what outlived the interpreter and where it was allocated.  Their
   tracebacks are copies whose filenames are UTF-8 strings of their own:
   the interpreter's objects are gone.

   A free looks for its block in the leftovers when no tracing interpreter
   has it (untrace_block_elsewhere()): their traces stay counted in the
   owner map under the tag of the session that made them, so that frees of
   these blocks take the slow path, and the hooks stay installed while
   there are leftovers.  A set whose last trace is freed gives back the
   memory of its tables and tracebacks at once, and the set itself goes
   when the next interpreter ends or the leftovers are cleared: only start
   and stop (under hooks_mutex) change the list, for it decides whether the
   hooks are installed.

   The leftovers are bounded: beyond MAX_LEFTOVER_SETS sets or
   MAX_LEFTOVER_TRACES traces, the oldest sets are dropped (and counted),
   though the newest set is always kept. */

#define MAX_LEFTOVER_SETS 256
#define MAX_LEFTOVER_TRACES ((size_t)1 << 20)

typedef struct {
    const char *filename;       /* UTF-8 */
    unsigned int lineno;
} leftover_frame_t;

typedef struct {
    uint16_t nframe;
    uint16_t total_nframe;
    leftover_frame_t frames[1];
} leftover_traceback_t;

#define LEFTOVER_TRACEBACK_SIZE(NFRAME) \
        (sizeof(leftover_traceback_t) + sizeof(leftover_frame_t) * (NFRAME - 1))

/* The tracebacks of a set, indexed as the interned tracebacks were, so
   that the traces' traceback indexes still apply.  Reference counted so
   that a conversion to Python objects keeps them while the set goes.
   Protected by the registry mutex; immutable but for refcnt. */
typedef struct {
    Py_ssize_t refcnt;
    leftover_traceback_t **by_index;    /* NULL: not used by a trace */
    uint32_t nindex;
    char **filenames;           /* each distinct filename, once */
    size_t nfilenames;
    size_t memory;              /* in bytes, all of the above */
} leftover_tracebacks_t;

/* A set of leftovers: _PyRuntime.tracemalloc.leftovers links them.  Every
   field is protected by the registry mutex. */
struct tracemalloc_leftovers {
    struct tracemalloc_leftovers *next;     /* the next newer set */
    int64_t interp_id;
    int max_nframe;
    /* The tag of the interpreter's last session: the owner map counts the
       traces under it, so no new session may have it while they remain. */
    uint32_t owner_tag;
    /* Traces and bytes left, and what there was when the interpreter
       ended. */
    size_t count;
    size_t size;
    size_t ended_size;
    /* The tables, as the interpreter left them (with the traces of each
       stripe, or NULL); NULL once count is 0. */
    traces_t *traces[NSTRIPES];
    _Py_hashtable_t *domains;
    leftover_tracebacks_t *tracebacks;
};

typedef struct tracemalloc_leftovers leftovers_t;

static int leftovers_untrace(unsigned int domain, uintptr_t ptr);
static int leftovers_hold_tag(uint32_t tag);


/* Set while this thread runs inside a hook: a nested allocation (pymalloc
   asking the raw domain for a large block, say) is the same block, or
   tracemalloc's own, and is not traced again. */
static _Py_thread_local int reentrant = 0;

/* The block this thread's outermost hook is freeing or reallocating, whose
   trace that hook already dropped: pymalloc hands a large block to the raw
   domain, whose hook must not look for the trace again (in every tracing
   interpreter, under their locks).  NULL if none. */
static _Py_thread_local void *untraced_block = NULL;

/* The trace of untraced_block, if the debug hooks may report it (see
   _PyMem_DumpTraceback()), or NULL. */
static _Py_thread_local const dropped_t *untraced_trace = NULL;

/* The state of the interpreter whose thread state was last seen attached
   in this thread by the hooks: where a block allocated later with no
   attached thread state goes, if that interpreter is still registered as
   tracing.  Never dereferenced before the registry vouches for it.

   It is compared by address only.  If its interpreter is deleted and a
   new one is made at the same address, a thread that outlived the first
   one and allocates with no thread state gives its blocks to the second,
   if that one traces.  That is safe: the state is registered, so alive,
   and whoever frees such a block finds it through the registry as for any
   other.  The only cost is a block attributed to an interpreter that did
   not ask for it, from a thread that no longer belongs to any, which is
   no worse than the main interpreter a thread Python did not create gives
   its blocks to. */
static _Py_thread_local tm_state_t *last_attached = NULL;

/* The block this thread allocated or reallocated last through the hooks,
   traced there or left untraced (by a snapshot being converted, say),
   until it becomes an object (see _PyTraceMalloc_OnNewReference()) or
   this thread frees it. */
_Py_thread_local struct _PyTraceMalloc_last_block
    _PyTraceMalloc_last_allocated = {0, 0};

/* Note the block at ptr (NULL: none) of size bytes as allocated last. */
static inline void
set_last_allocated(void *ptr, size_t size)
{
    _PyTraceMalloc_last_allocated.start = (uintptr_t)ptr;
    _PyTraceMalloc_last_allocated.size = ptr != NULL ? size : 0;
}


/* --- Locks --------------------------------------------------------------- */

static inline void
lock_registry(void)
{
    PyMutex_LockFlags(&runtime_state.mutex, _Py_LOCK_DONT_DETACH);
}

static inline void
unlock_registry(void)
{
    PyMutex_Unlock(&runtime_state.mutex);
}

/* --- Spinlocks (see _PyTraceMalloc_SpinLock) ---------------------------- */

/* Wait for a lock word: spin a little, then yield the CPU, then sleep,
   for the holder may be copying a large snapshot. */
static void
backoff(unsigned int attempt)
{
    if (attempt < 64) {
        return;
    }
#ifdef MS_WINDOWS
    Sleep(attempt < 1024 ? 0 : 1);
#else
    if (attempt < 1024) {
        sched_yield();
    }
    else {
        struct timespec pause = {0, 50 * 1000};
        nanosleep(&pause, NULL);
    }
#endif
}

static inline int
spin_try_lock(_PyTraceMalloc_SpinLock *lock)
{
    int unlocked = 0;
    return _Py_atomic_compare_exchange_int(&lock->locked, &unlocked, 1);
}

static TM_SLOW_PATH void
spin_lock_contended(_PyTraceMalloc_SpinLock *lock)
{
    for (unsigned int attempt = 0; ; attempt++) {
        if (_Py_atomic_load_int_relaxed(&lock->locked) == 0
            && spin_try_lock(lock))
        {
            return;
        }
        backoff(attempt);
    }
}

static inline void
spin_lock(_PyTraceMalloc_SpinLock *lock)
{
    if (!spin_try_lock(lock)) {
        spin_lock_contended(lock);
    }
}

static inline void
spin_unlock(_PyTraceMalloc_SpinLock *lock)
{
    assert(_Py_atomic_load_int_relaxed(&lock->locked) == 1);
    _Py_atomic_store_int_release(&lock->locked, 0);
}

#ifdef Py_GIL_DISABLED
/* The lock of one stripe of the state's traces; own says that the
   caller's thread state is attached to the interpreter of state, which
   only the default build makes use of. */
static inline void
lock_stripe(tm_state_t *Py_UNUSED(state), stripe_t *stripe,
            int Py_UNUSED(own))
{
    spin_lock(&stripe->lock);
}

static inline void
unlock_stripe(tm_state_t *Py_UNUSED(state), stripe_t *stripe,
              int Py_UNUSED(own))
{
    spin_unlock(&stripe->lock);
}

/* The lock of the rest of the state's tables (the interned tracebacks,
   the other domains), taken by a thread that holds a stripe's. */
static inline void
lock_shared(tm_state_t *state)
{
    PyMutex_LockFlags(&state->mutex, _Py_LOCK_DONT_DETACH);
}

static inline void
unlock_shared(tm_state_t *state)
{
    PyMutex_Unlock(&state->mutex);
}

/* All of the state's locks, in the lock order. */
static void
lock_state(tm_state_t *state)
{
    for (int i = 0; i < NSTRIPES; i++) {
        spin_lock(&state_stripe(state, i)->lock);
    }
    lock_shared(state);
}

static void
unlock_state(tm_state_t *state)
{
    unlock_shared(state);
    for (int i = NSTRIPES - 1; i >= 0; i--) {
        spin_unlock(&state_stripe(state, i)->lock);
    }
}

/* For the fatal error paths, where this thread may have crashed inside
   a critical section: never waits. */
static int
try_lock_state(tm_state_t *state)
{
    int i = 0;
    while (i < NSTRIPES && spin_try_lock(&state_stripe(state, i)->lock)) {
        i++;
    }
    if (i == NSTRIPES && PyMutex_LockFast(&state->mutex._bits)) {
        return 1;
    }
    while (--i >= 0) {
        spin_unlock(&state_stripe(state, i)->lock);
    }
    return 0;
}
#else
/* The biased lock of the default build (see _PyTraceMalloc_Lock).

   The owner of a state is the thread attached to its interpreter: it holds
   the interpreter's GIL, so there is at most one owner at a time, and each
   sees what the ones before it wrote (the GIL orders them).  Any other
   thread is an outsider.

   While the lock is biased, the owner enters by storing busy = 1 and then
   loading biased, with only a compiler barrier between them; it leaves by
   storing busy = 0 (a release).  An outsider takes the spinlock, clears
   biased, issues a heavy barrier, and waits until busy reads 0.  This is
   Dekker's algorithm made asymmetric: the heavy barrier acts as a full
   fence on every thread running at that moment, so either the owner's
   busy = 1 is visible to the outsider once the barrier returns, or the
   owner's load of biased comes after the barrier and reads 0.  An owner
   that reads 0 clears busy and takes the spinlock instead, as outsiders
   do; after REBIAS_AFTER such critical sections with no outsider in
   between, it biases the lock again, holding the spinlock.  A state's
   lock is thus revoked at most once per REBIAS_AFTER critical sections of
   its owner, whatever the outsiders do. */

#define REBIAS_AFTER (1 << 14)

#if defined(MS_WINDOWS) && !defined(__clang__)
#  define compiler_barrier() _ReadWriteBarrier()
#else
#  define compiler_barrier() __atomic_signal_fence(__ATOMIC_SEQ_CST)
#endif

/* 1 if the heavy barrier is available, -1 if not, 0 until asked.  Asking
   twice is harmless. */
static int heavy_barrier_state = 0;

static int
heavy_barrier_available(void)
{
    int available = _Py_atomic_load_int_relaxed(&heavy_barrier_state);
    if (available == 0) {
#ifdef HAVE_MEMBARRIER
        available = syscall(__NR_membarrier,
                            MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                            0, 0) == 0 ? 1 : -1;
#else
        available = -1;
#endif
        _Py_atomic_store_int_relaxed(&heavy_barrier_state, available);
    }
    return available > 0;
}

/* A full memory barrier on every running thread of the process.  Only
   called once heavy_barrier_available() said yes: a lock is never biased
   before. */
static void
heavy_barrier(void)
{
#ifdef HAVE_MEMBARRIER
    if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED,
                0, 0) == 0)
    {
        return;
    }
    /* Not expected once registered; the slow global barrier needs no
       registration. */
    if (syscall(__NR_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) == 0) {
        return;
    }
#endif
    Py_FatalError("tracemalloc: no memory barrier to revoke a biased lock");
}

/* Does this thread own state (see above)? */
static inline int
is_owner(tm_state_t *state)
{
    PyThreadState *tstate = _PyThreadState_GET();
    return tstate != NULL && &tstate->interp->tracemalloc == state;
}

/* Enter through the bias if the lock has it: return 1 if so. */
static inline int
owner_enter_biased(_PyTraceMalloc_Lock *lock)
{
    _Py_atomic_store_int_relaxed(&lock->busy, 1);
    compiler_barrier();     /* the light side of the barrier */
    if (_Py_atomic_load_int_relaxed(&lock->biased)) {
        return 1;
    }
    _Py_atomic_store_int_relaxed(&lock->busy, 0);
    return 0;
}

/* The owner holds the spinlock: bias the lock again if outsiders have
   left it alone long enough. */
static inline void
owner_locked(_PyTraceMalloc_Lock *lock)
{
    lock->owner_locked = 1;
    if (++lock->unbiased_runs >= REBIAS_AFTER) {
        lock->unbiased_runs = 0;
        if (heavy_barrier_available()) {
            _Py_atomic_store_int_relaxed(&lock->biased, 1);
        }
    }
}

static inline void
lock_own_state(tm_state_t *state)
{
    _PyTraceMalloc_Lock *lock = &state->mutex;
    assert(is_owner(state));
    assert(!lock->busy && !lock->owner_locked);
    if (!owner_enter_biased(lock)) {
        spin_lock(&lock->spin);
        owner_locked(lock);
    }
}

static inline void
unlock_own_state(tm_state_t *state)
{
    _PyTraceMalloc_Lock *lock = &state->mutex;
    assert(is_owner(state));
    if (lock->owner_locked) {
        lock->owner_locked = 0;
        spin_unlock(&lock->spin);
    }
    else {
        assert(lock->busy);
        _Py_atomic_store_int_release(&lock->busy, 0);
    }
}

/* Take the spinlock and revoke the bias; return 0 instead of waiting if
   wait is 0 and the lock is held. */
static int
outsider_lock(_PyTraceMalloc_Lock *lock, int wait)
{
    if (wait) {
        spin_lock(&lock->spin);
    }
    else if (!spin_try_lock(&lock->spin)) {
        return 0;
    }
    lock->unbiased_runs = 0;
    if (_Py_atomic_load_int_relaxed(&lock->biased)) {
        _Py_atomic_store_int_relaxed(&lock->biased, 0);
        heavy_barrier();
    }
    /* An owner that entered through the bias before it was revoked */
    for (unsigned int attempt = 0;
         _Py_atomic_load_int_acquire(&lock->busy); attempt++)
    {
        if (!wait) {
            spin_unlock(&lock->spin);
            return 0;
        }
        backoff(attempt);
    }
    return 1;
}

static inline void
lock_state(tm_state_t *state)
{
    if (is_owner(state)) {
        lock_own_state(state);
    }
    else {
        (void)outsider_lock(&state->mutex, 1);
    }
}

static inline void
unlock_state(tm_state_t *state)
{
    if (is_owner(state)) {
        unlock_own_state(state);
    }
    else {
        spin_unlock(&state->mutex.spin);
    }
}

/* For the fatal error paths, where this thread may have crashed inside
   a critical section: never waits. */
static int
try_lock_state(tm_state_t *state)
{
    _PyTraceMalloc_Lock *lock = &state->mutex;
    if (!is_owner(state)) {
        return outsider_lock(lock, 0);
    }
    if (lock->busy || lock->owner_locked) {
        return 0;
    }
    if (owner_enter_biased(lock)) {
        return 1;
    }
    if (!spin_try_lock(&lock->spin)) {
        return 0;
    }
    lock->owner_locked = 1;
    return 1;
}

/* The single stripe's lock is the state's (see the free-threaded build's
   versions above). */
static inline void
lock_stripe(tm_state_t *state, stripe_t *Py_UNUSED(stripe), int own)
{
    if (own) {
        lock_own_state(state);
    }
    else {
        lock_state(state);
    }
}

static inline void
unlock_stripe(tm_state_t *state, stripe_t *Py_UNUSED(stripe), int own)
{
    if (own) {
        unlock_own_state(state);
    }
    else {
        unlock_state(state);
    }
}

static inline void
lock_shared(tm_state_t *Py_UNUSED(state))
{
}

static inline void
unlock_shared(tm_state_t *Py_UNUSED(state))
{
}
#endif

/* Lock-free hints, checked again under the lock. */
static inline int
state_is_tracing(tm_state_t *state)
{
    return _Py_atomic_load_int_relaxed(&state->tracing);
}

/* Non-zero while the hooks are installed: while an interpreter traces, or
   there are leftovers, whose blocks are to be untraced when freed. */
static inline Py_ssize_t
ntracing_hint(void)
{
    return _Py_atomic_load_ssize_relaxed(&runtime_state.nusers);
}

/* A state joins or leaves the registry, and its tracing flag changes with
   it: the registry's generation is odd meanwhile.  Called with the
   registry locked. */
static void
registry_change_begin(void)
{
    _Py_atomic_add_uint64(&runtime_state.generation, 1);
}

static void
registry_change_end(void)
{
    _Py_atomic_add_uint64(&runtime_state.generation, 1);
}

/* Is state the only one that traces, with no leftovers?  Read without the
   registry lock, as a seqlock reader: nusers and the flag of state must be
   read together, or a state joining or leaving the registry meanwhile could
   hide another one that traces.  Says no when in doubt. */
static int
only_tracer(tm_state_t *state)
{
    uint64_t generation =
        _Py_atomic_load_uint64_acquire(&runtime_state.generation);
    if (generation & 1) {
        return 0;
    }
    int only = (_Py_atomic_load_ssize_relaxed(&runtime_state.nusers) == 1
                && _Py_atomic_load_int_relaxed(&state->tracing));
    _Py_atomic_fence_acquire();
    return (only && _Py_atomic_load_uint64_relaxed(&runtime_state.generation)
                    == generation);
}


/* --- Memory of tracemalloc itself ---------------------------------------- */

static void*
raw_malloc(size_t size)
{
    return allocators.raw.malloc(allocators.raw.ctx, size);
}

static void*
raw_calloc(size_t nelem, size_t elsize)
{
    return allocators.raw.calloc(allocators.raw.ctx, nelem, elsize);
}

static void
raw_free(void *ptr)
{
    allocators.raw.free(allocators.raw.ctx, ptr);
}


/* --- The owner map ------------------------------------------------------ */

/* An interpreter that does not trace frees blocks nobody traces nearly all
   the time, and must learn that without a lock: asking each tracing
   interpreter under its lock made every free of a pool of isolated
   interpreters wait for the one that traces.  The owner map counts the
   traces of every tracing interpreter by region of address space, and
   says whose they are: an entry packs the number of traces in the regions
   that map to it with the tag of the tracing session that made them all
   (OWNER_SHARED if two sessions did, OWNER_NONE if there are none).  A free
   need look further only if its entry counts traces of another session
   than the caller's.

   Regions are 64 KiB, the size of four pymalloc pools: each isolated
   interpreter has its own arenas, and glibc gives each thread its own
   arena, so the regions of interpreters that share nothing rarely mix.
   The map is indexed by the region's address modulo its size, so the
   regions of one heap use neighbouring entries, and only the pages of the
   map that are used take memory.

   Why a count read without a lock is enough: the trace of a block is
   counted before the hook that allocated it returns, so any thread that
   frees the block later was handed it after the count was made, and
   reads it, or a later value of the entry, which keeps its tag other than
   the caller's until every trace it counts is gone.  A count of a trace
   removed meanwhile only sends a free the slow way.  Counts are removed
   after the traces are, never before.

   A process with one interpreter never needs the map, and its tracing
   should not pay for counting: the map is made by the first free that
   would use it, the first of an interpreter other than the only tracing
   one, which then counts the traces the tables already hold.  From then
   on, every table counts its traces (traces->counted), and until then,
   frees ask the registry as they did.  (A thread with no thread state
   does not make the map: it asks the registry anyway, for the interpreter
   its blocks belong to.) */

#define REGION_SHIFT 16
#define OWNER_MAP_BITS 20
#define OWNER_NONE 0
#define OWNER_SHARED UINT32_MAX

/* The owner map: 1 << OWNER_MAP_BITS entries, count | tag << 32, or NULL
   until first needed.  Kept for the life of the process, since a hook may
   read it at any time (even across a finalization and a new
   initialization of the runtime).  Set under the registry mutex. */
static uint64_t *owner_map = NULL;

static inline uint64_t *
owner_entry(uint64_t *map, uintptr_t ptr)
{
    return &map[(ptr >> REGION_SHIFT)
                & (((uintptr_t)1 << OWNER_MAP_BITS) - 1)];
}

/* Is the owner map made?  Read under a lock that orders it. */
static inline int
owner_map_made(void)
{
    return _Py_atomic_load_ptr_relaxed(&owner_map) != NULL;
}

/* Count n traces of the session tag in ptr's region. */
static inline void
owner_map_add(uintptr_t ptr, uint32_t tag, uint32_t n)
{
    uint64_t *entry = owner_entry(owner_map, ptr);
    uint64_t old = _Py_atomic_load_uint64_relaxed(entry);
    uint64_t new;
    do {
        uint32_t count = (uint32_t)old;
        uint32_t owner = (uint32_t)(old >> 32);
        assert(count <= UINT32_MAX - n);
        if (count != 0 && owner != tag) {
            owner = OWNER_SHARED;
        }
        else {
            owner = tag;
        }
        new = ((uint64_t)owner << 32) | (count + n);
    } while (!_Py_atomic_compare_exchange_uint64(entry, &old, new));
}

/* Uncount n traces in ptr's region, which were counted. */
static inline void
owner_map_remove(uintptr_t ptr, uint32_t n)
{
    uint64_t *entry = owner_entry(owner_map, ptr);
    uint64_t old = _Py_atomic_load_uint64_relaxed(entry);
    uint64_t new;
    do {
        uint32_t count = (uint32_t)old;
        assert(count >= n);
        /* the last trace gone, the region belongs to nobody */
        new = (count == n) ? 0 : old - n;
    } while (!_Py_atomic_compare_exchange_uint64(entry, &old, new));
}

/* owner_map_add(), or owner_map_remove() if tag is OWNER_NONE. */
static void
owner_map_change(uintptr_t ptr, uint32_t tag, uint32_t n)
{
    if (tag != OWNER_NONE) {
        owner_map_add(ptr, tag, n);
    }
    else {
        owner_map_remove(ptr, n);
    }
}

/* May a session other than tag (OWNER_NONE: any session) trace ptr?  Read
   without any lock: see above. */
static inline int
owner_map_others_may_trace(uintptr_t ptr, uint32_t tag)
{
    uint64_t *map = _Py_atomic_load_ptr_acquire(&owner_map);
    if (map == NULL) {
        return 1;  /* no session has started yet: ask the registry */
    }
    uint64_t entry = _Py_atomic_load_uint64_relaxed(owner_entry(map, ptr));
    return (uint32_t)entry != 0 && (uint32_t)(entry >> 32) != tag;
}


/* --- Hash tables --------------------------------------------------------- */

static Py_uhash_t
hashtable_hash_pyobject(const void *key)
{
    PyObject *obj = (PyObject *)key;
    return PyObject_Hash(obj);
}


static int
hashtable_compare_unicode(const void *key1, const void *key2)
{
    PyObject *obj1 = (PyObject *)key1;
    PyObject *obj2 = (PyObject *)key2;
    if (obj1 != NULL && obj2 != NULL) {
        return (PyUnicode_Compare(obj1, obj2) == 0);
    }
    else {
        return obj1 == obj2;
    }
}


static Py_uhash_t
hashtable_hash_uint(const void *key_raw)
{
    unsigned int key = (unsigned int)FROM_PTR(key_raw);
    return (Py_uhash_t)key;
}


static _Py_hashtable_t *
hashtable_new(_Py_hashtable_hash_func hash_func,
              _Py_hashtable_compare_func compare_func,
              _Py_hashtable_destroy_func key_destroy_func,
              _Py_hashtable_destroy_func value_destroy_func)
{
    _Py_hashtable_allocator_t hashtable_alloc = {malloc, free};
    return _Py_hashtable_new_full(hash_func, compare_func,
                                  key_destroy_func, value_destroy_func,
                                  &hashtable_alloc);
}


static int
traceback_equal(const traceback_t *traceback1, const traceback_t *traceback2)
{
    if (traceback1->nframe != traceback2->nframe) {
        return 0;
    }
    if (traceback1->total_nframe != traceback2->total_nframe) {
        return 0;
    }

    for (int i=0; i < traceback1->nframe; i++) {
        const frame_t *frame1 = &traceback1->frames[i];
        const frame_t *frame2 = &traceback2->frames[i];

        if (frame1->lineno != frame2->lineno) {
            return 0;
        }
        if (frame1->filename != frame2->filename) {
            assert(PyUnicode_Compare(frame1->filename, frame2->filename) != 0);
            return 0;
        }
    }
    return 1;
}


static void
tracemalloc_clear_filename(void *value)
{
    PyObject *filename = (PyObject *)value;
    Py_DECREF(filename);
}


#include "tracemalloc_table.h"      // traces_t: the traces table



/* Count (tag != OWNER_NONE) or uncount the traces of a table in the
   owner map, a run of traces of one region at a time. */
typedef struct {
    uint32_t tag;
    uintptr_t region;           /* of the run */
    uintptr_t ptr;              /* of its first trace */
    uint32_t n;                 /* traces in the run */
} count_run_t;

static void
count_run_flush(count_run_t *run)
{
    if (run->n != 0) {
        owner_map_change(run->ptr, run->tag, run->n);
        run->n = 0;
    }
}

static void
count_trace(void *arg, uintptr_t ptr, size_t Py_UNUSED(size),
            uint32_t Py_UNUSED(traceback))
{
    count_run_t *run = arg;
    if (run->n != 0 && (ptr >> REGION_SHIFT) != run->region) {
        count_run_flush(run);
    }
    if (run->n == 0) {
        run->region = ptr >> REGION_SHIFT;
        run->ptr = ptr;
    }
    run->n++;
}

static void
traces_count(traces_t *traces, uint32_t tag)
{
    count_run_t run = {.tag = tag};
    traces_foreach(traces, count_trace, &run);
    count_run_flush(&run);
}

/* Destroy a table whose traces are no longer reachable from a state: they
   leave the owner map. */
static void
drop_traces(traces_t *traces)
{
    if (traces->counted && traces->count != 0) {
        traces_count(traces, OWNER_NONE);
    }
    traces_destroy(traces);
}

static void
destroy_traces(void *traces)
{
    drop_traces((traces_t *)traces);
}

static _Py_hashtable_t*
domains_table_new(void)
{
    return hashtable_new(hashtable_hash_uint,
                         _Py_hashtable_compare_direct,
                         NULL, destroy_traces);
}


static struct tracemalloc_capture_cache *stripe_cache_new(tm_state_t *state,
                                                          stripe_t *stripe);

#include "tracemalloc_capture.h"    // traceback_new(): capturing a traceback



/* --- Stripes ------------------------------------------------------------ */

/* The stripes (see pycore_tracemalloc.h): segments of 32 MiB of address
   space (4 MiB on 32-bit platforms), as mimalloc's. */
#define SEGMENT_SHIFT (SIZEOF_VOID_P == 8 ? 25 : 22)

#if NSTRIPES > 1
/* This thread's stripe plus one, in every interpreter; 0 until it traces
   a block in a segment that has no stripe yet.  Threads get the stripes
   in turn. */
static _Py_thread_local int thread_stripe = 0;
static int last_thread_stripe = 0;

static inline uint8_t *
segment_stripe(tm_state_t *state, uintptr_t ptr)
{
    return &state->segment_stripes[(ptr >> SEGMENT_SHIFT)
                                   & (_PyTraceMalloc_NSEGMENTS - 1)];
}

/* Give the segment this thread's stripe, unless another thread gave it
   its own first; return the segment's stripe plus one. */
static TM_SLOW_PATH int
assign_segment(uint8_t *segment)
{
    if (thread_stripe == 0) {
        int n = _Py_atomic_add_int(&last_thread_stripe, 1);
        thread_stripe = 1 + n % NSTRIPES;
    }
    uint8_t stripe = 0;
    if (_Py_atomic_compare_exchange_uint8(segment, &stripe,
                                          (uint8_t)thread_stripe))
    {
        return thread_stripe;
    }
    return stripe;
}
#endif

/* The stripe to trace a block at ptr in. */
static inline stripe_t *
stripe_to_trace(tm_state_t *state, uintptr_t ptr)
{
#if NSTRIPES > 1
    uint8_t *segment = segment_stripe(state, ptr);
    int stripe = _Py_atomic_load_uint8_relaxed(segment);
    if (stripe == 0) {
        stripe = assign_segment(segment);
    }
    return state_stripe(state, stripe - 1);
#else
    (void)ptr;
    return state_stripe(state, 0);
#endif
}

/* The stripe the trace of ptr is in, if the state has one: NULL if no
   block was traced in its segment.  The block was traced before whoever
   looks for its trace could get its address, so the segment's stripe is
   seen. */
static inline stripe_t *
stripe_to_find(tm_state_t *state, uintptr_t ptr)
{
#if NSTRIPES > 1
    int stripe = _Py_atomic_load_uint8_relaxed(segment_stripe(state, ptr));
    return stripe ? state_stripe(state, stripe - 1) : NULL;
#else
    (void)ptr;
    return state_stripe(state, 0);
#endif
}

/* The free-threaded build counts the bytes traced per stripe, under the
   stripe's lock, and adds a stripe's change to the state's total once it
   reaches FLUSH_MEMORY: the stripes of threads allocating at the same
   time do not share a counter.  The peak is the highest total a stripe
   saw, its own change included: exact with one stripe in use, and short
   by less than FLUSH_MEMORY per other stripe otherwise.  Those who read
   the counters hold all the state's locks, and add the stripes up. */
#define FLUSH_MEMORY ((size_t)1 << 16)

#ifdef Py_GIL_DISABLED
static inline void
raise_peak(tm_state_t *state, size_t traced)
{
    size_t peak = _Py_atomic_load_ssize_relaxed(
        (Py_ssize_t *)&state->peak_traced_memory);
    while (traced > peak
           && !_Py_atomic_compare_exchange_ssize(
               (Py_ssize_t *)&state->peak_traced_memory,
               (Py_ssize_t *)&peak, (Py_ssize_t)traced))
    {
    }
}

static void
flush_traced(tm_state_t *state, stripe_t *stripe)
{
    size_t change = stripe->traced_memory - stripe->flushed_memory;
    _Py_atomic_add_ssize((Py_ssize_t *)&state->traced_memory,
                         (Py_ssize_t)change);
    stripe->flushed_memory = stripe->traced_memory;
}
#endif

#ifdef Py_GIL_DISABLED
/* The stripe's count changed: add it to the total if it changed enough,
   and raise the peak if the count grew. */
static inline void
stripe_traced_changed(tm_state_t *state, stripe_t *stripe, int grew)
{
    Py_ssize_t change = (Py_ssize_t)(stripe->traced_memory
                                     - stripe->flushed_memory);
    if (change >= (Py_ssize_t)FLUSH_MEMORY
        || change <= -(Py_ssize_t)FLUSH_MEMORY)
    {
        flush_traced(state, stripe);
        change = 0;
    }
    if (grew) {
        size_t total = (size_t)_Py_atomic_load_ssize_relaxed(
            (Py_ssize_t *)&state->traced_memory);
        raise_peak(state, total + (size_t)change);
    }
}
#endif

/* A trace of size bytes was added to the stripe. */
static inline void
count_traced(tm_state_t *state, stripe_t *stripe, size_t size)
{
#ifdef Py_GIL_DISABLED
    stripe->traced_memory += size;
    stripe_traced_changed(state, stripe, 1);
#else
    (void)stripe;
    assert(state->traced_memory <= SIZE_MAX - size);
    state->traced_memory += size;
    if (state->traced_memory > state->peak_traced_memory) {
        state->peak_traced_memory = state->traced_memory;
    }
#endif
}

/* A trace of size bytes was removed from the stripe. */
static inline void
count_untraced(tm_state_t *state, stripe_t *stripe, size_t size)
{
#ifdef Py_GIL_DISABLED
    assert(stripe->traced_memory >= size);
    stripe->traced_memory -= size;
    stripe_traced_changed(state, stripe, 0);
#else
    (void)stripe;
    assert(state->traced_memory >= size);
    state->traced_memory -= size;
#endif
}

/* The bytes traced now: with all the state's locks held, the total is
   brought up to date, and the peak with it. */
static size_t
traced_now(tm_state_t *state)
{
#ifdef Py_GIL_DISABLED
    for (int i = 0; i < NSTRIPES; i++) {
        flush_traced(state, state_stripe(state, i));
    }
    raise_peak(state, state->traced_memory);
#endif
    return state->traced_memory;
}

/* Forget the bytes traced, with all the state's locks held. */
static void
reset_traced(tm_state_t *state)
{
#ifdef Py_GIL_DISABLED
    for (int i = 0; i < NSTRIPES; i++) {
        state_stripe(state, i)->traced_memory = 0;
        state_stripe(state, i)->flushed_memory = 0;
    }
#endif
    state->traced_memory = 0;
    state->peak_traced_memory = 0;
}

/* The stripe's traces table, made if it had none; NULL on memory error.
   Called with the stripe's lock held. */
static TM_SLOW_PATH traces_t *
stripe_traces_new(stripe_t *stripe)
{
    assert(stripe->traces == NULL);
    traces_t *traces = traces_new();
    if (traces != NULL) {
        traces->counted = owner_map_made();
        stripe->traces = traces;
    }
    return traces;
}

/* The stripe's capture cache, made if it had none; NULL on memory
   error.  Called with the stripe's lock held, while the state traces. */
static TM_SLOW_PATH capture_cache_t *
stripe_cache_new(tm_state_t *state, stripe_t *stripe)
{
    assert(stripe->cache == NULL);
    stripe->cache = capture_cache_new(state->max_nframe);
    return stripe->cache;
}

static int count_domain(_Py_hashtable_t *domains, const void *key,
                        const void *value, void *user_data);

/* The number of traces in tables. */
static size_t
tables_count(traces_t *const traces[NSTRIPES], _Py_hashtable_t *domains)
{
    size_t count = 0;
    for (int i = 0; i < NSTRIPES; i++) {
        if (traces[i] != NULL) {
            count += traces[i]->count;
        }
    }
    if (domains != NULL) {
        _Py_hashtable_foreach(domains, count_domain, &count);
    }
    return count;
}

/* The traces tables of the state's stripes. */
static void
state_traces(tm_state_t *state, traces_t *traces[NSTRIPES])
{
    for (int i = 0; i < NSTRIPES; i++) {
        traces[i] = state_stripe(state, i)->traces;
    }
}


/* --- Traces of one interpreter (the lock of their stripe held) ---------- */

/* The table that would hold the trace of ptr in a domain, or NULL if
   there is none.  Called with all the state's locks held. */
static traces_t *
find_traces_table(tm_state_t *state, unsigned int domain, uintptr_t ptr)
{
    stripe_t *stripe = stripe_to_find(state, ptr);
    if (stripe == NULL) {
        return NULL;
    }
    if (domain == DEFAULT_DOMAIN) {
        return stripe->traces;
    }
    return _Py_hashtable_get(state->domains, TO_PTR(domain));
}

/* The traceback of the trace of ptr, or NULL.  Called with all the
   state's locks held. */
static traceback_t *
find_traceback(tm_state_t *state, unsigned int domain, uintptr_t ptr)
{
    traces_t *traces = find_traces_table(state, domain, ptr);
    size_t size;
    uint32_t traceback;
    if (traces == NULL || !traces_get(traces, ptr, &size, &traceback)) {
        return NULL;
    }
    return state->interned->by_index[traceback];
}


/* Remove the trace of ptr from traces, if there; return 1 if it was,
   describing it in *dropped if dropped is not NULL. */
static inline Py_ALWAYS_INLINE int
pop_trace(tm_state_t *state, stripe_t *stripe, traces_t *traces,
          uintptr_t ptr, dropped_t *dropped)
{
    size_t old_size;
    uint32_t traceback;
    if (traces == NULL
        || !traces_pop(traces, ptr, &old_size,
                       dropped != NULL ? &traceback : NULL))
    {
        return 0;
    }
    if (traces->counted) {
        owner_map_remove(ptr, 1);
    }
    count_untraced(state, stripe, old_size);
    if (dropped != NULL) {
        *dropped = (dropped_t){state, state->generation, state->interned,
                               old_size, traceback};
    }
    return 1;
}

/* Trace ptr in traces, replacing its trace if it had one. */
static inline Py_ALWAYS_INLINE int
set_trace(tm_state_t *state, stripe_t *stripe, traces_t *traces,
          uintptr_t ptr, size_t size, uint32_t traceback)
{
    size_t old_size;
    int res = traces_set(traces, ptr, size, traceback, &old_size);
    if (res < 0) {
        return -1;
    }
    if (res == 1) {
        /* the memory block was already tracked */
        count_untraced(state, stripe, old_size);
    }
    else if (traces->counted) {
        owner_map_add(ptr, state->owner_tag, 1);
    }
    count_traced(state, stripe, size);
    return 0;
}

/* remove_trace() of a domain other than the default one. */
static TM_SLOW_PATH int
remove_domain_trace(tm_state_t *state, stripe_t *stripe,
                    unsigned int domain, uintptr_t ptr, dropped_t *dropped)
{
    lock_shared(state);
    traces_t *traces = _Py_hashtable_get(state->domains, TO_PTR(domain));
    int found = pop_trace(state, stripe, traces, ptr, dropped);
    unlock_shared(state);
    return found;
}

/* Remove the trace of ptr, if the state has one; return 1 if it had,
   describing it in *dropped if dropped is not NULL.  Called with the lock
   of the stripe of ptr held. */
static inline Py_ALWAYS_INLINE int
remove_trace(tm_state_t *state, stripe_t *stripe, unsigned int domain,
             uintptr_t ptr, dropped_t *dropped)
{
    if (!state->tracing) {
        return 0;
    }
    if (domain != DEFAULT_DOMAIN) {
        return remove_domain_trace(state, stripe, domain, ptr, dropped);
    }
    return pop_trace(state, stripe, stripe->traces, ptr, dropped);
}


/* remove_trace() with the lock of the stripe of ptr taken and released;
   own says that the caller's thread state is attached to the interpreter
   of state (see lock_own_state()). */
static inline Py_ALWAYS_INLINE int
remove_trace_locked(tm_state_t *state, int own, unsigned int domain,
                    uintptr_t ptr, dropped_t *dropped)
{
    stripe_t *stripe = stripe_to_find(state, ptr);
    if (stripe == NULL) {
        return 0;
    }
    lock_stripe(state, stripe, own);
    int found = remove_trace(state, stripe, domain, ptr, dropped);
    unlock_stripe(state, stripe, own);
    return found;
}


/* add_trace() of a domain other than the default one. */
static TM_SLOW_PATH int
add_domain_trace(tm_state_t *state, stripe_t *stripe, PyThreadState *tstate,
                 int take_refs, unsigned int domain, uintptr_t ptr,
                 size_t size)
{
    traceback_t *traceback = traceback_new(state, stripe, tstate, take_refs);
    if (traceback == NULL) {
        return -1;
    }
    int res = -1;
    lock_shared(state);
    traces_t *traces = _Py_hashtable_get(state->domains, TO_PTR(domain));
    if (traces == NULL) {
        traces = traces_new();
        if (traces == NULL) {
            goto done;
        }
        traces->counted = owner_map_made();
        if (_Py_hashtable_set(state->domains, TO_PTR(domain), traces) < 0) {
            traces_destroy(traces);
            goto done;
        }
    }
    res = set_trace(state, stripe, traces, ptr, size, traceback->index);
done:
    unlock_shared(state);
    return res;
}

/* Trace a block, with the frames of tstate (none if NULL).  Called with
   the lock of the stripe of ptr held, while the state traces. */
static inline Py_ALWAYS_INLINE int
add_trace(tm_state_t *state, stripe_t *stripe, PyThreadState *tstate,
          int take_refs, unsigned int domain, uintptr_t ptr, size_t size)
{
    assert(state->tracing);
    if (domain != DEFAULT_DOMAIN) {
        return add_domain_trace(state, stripe, tstate, take_refs, domain,
                                ptr, size);
    }
    traces_t *traces = stripe->traces;
    if (STRIPE_IS_LAZY && traces == NULL
        && (traces = stripe_traces_new(stripe)) == NULL)
    {
        return -1;
    }
    assert(traces != NULL);
    traceback_t *traceback = traceback_new(state, stripe, tstate, take_refs);
    if (traceback == NULL) {
        return -1;
    }
    return set_trace(state, stripe, traces, ptr, size, traceback->index);
}


/* --- Counting the traces in the owner map ------------------------------ */

static int
count_domain_traces(_Py_hashtable_t *domains, const void *key,
                    const void *value, void *user_data)
{
    traces_t *traces = (traces_t *)value;
    if (!traces->counted) {
        traces_count(traces, *(uint32_t *)user_data);
        traces->counted = 1;
    }
    return 0;
}

/* Count in the owner map, under tag, the traces of the tables of a state
   or of leftovers that do not count already. */
static void
tables_count_owner(traces_t *const traces[NSTRIPES],
                   _Py_hashtable_t *domains, uint32_t tag)
{
    for (int i = 0; i < NSTRIPES; i++) {
        if (traces[i] != NULL) {
            count_domain_traces(NULL, NULL, traces[i], &tag);
        }
    }
    _Py_hashtable_foreach(domains, count_domain_traces, &tag);
}

/* Make the owner map, and count in it the traces of every tracing state
   and of the leftovers (those of a table that counts already are
   counted).  Called with the
   registry locked.  On memory error, there is no map: the frees go on
   asking the registry. */
static void
owner_map_make(void)
{
    uint64_t *map = allocators.raw.calloc(allocators.raw.ctx,
                                          (size_t)1 << OWNER_MAP_BITS,
                                          sizeof(uint64_t));
    if (map == NULL) {
        return;
    }
    _Py_atomic_store_ptr_release(&owner_map, map);
    for (Py_ssize_t i = 0; i < runtime_state.ntracing; i++) {
        tm_state_t *state = runtime_state.tracing[i];
        lock_state(state);
        traces_t *traces[NSTRIPES];
        state_traces(state, traces);
        tables_count_owner(traces, state->domains, state->owner_tag);
        unlock_state(state);
    }
    /* The leftovers too: their frees must go the slow way. */
    for (leftovers_t *left = runtime_state.leftovers; left != NULL;
         left = left->next)
    {
        if (left->count != 0) {
            tables_count_owner(left->traces, left->domains, left->owner_tag);
        }
    }
}


/* --- Attribution --------------------------------------------------------- */

static tm_state_t *
interp_state(PyInterpreterState *interp)
{
    return &interp->tracemalloc;
}

/* Is state registered as tracing?  Called with the registry locked: a
   registered state cannot be freed until it is unregistered. */
static int
is_registered(tm_state_t *state)
{
    for (Py_ssize_t i = 0; i < runtime_state.ntracing; i++) {
        if (runtime_state.tracing[i] == state) {
            return 1;
        }
    }
    return 0;
}

/* The interpreter a block allocated with no attached thread state belongs
   to (see the comment at the top of the file), or NULL; *frames_of, if
   frames_of is not NULL, is set to the thread state whose frames make its
   traceback, or NULL.  Called with the registry locked.

   Those frames are read while other threads of the interpreter run, and
   may instrument the code objects on them (sys.monitoring, sys.settrace).
   That is safe: the frames are this thread's own, and cannot be pushed or
   popped while it is inside the hook; each holds a strong reference to
   its code object; and the capture reads of a code object only
   co_filename and co_linetable, which never change after its creation
   (instrumentation rewrites co_code_adaptive and _co_monitoring). */
static tm_state_t *
unattached_owner(PyThreadState **frames_of)
{
    if (frames_of != NULL) {
        *frames_of = NULL;
    }
    if (last_attached != NULL) {
        if (!is_registered(last_attached)) {
            /* that interpreter does not trace, or is gone */
            return NULL;
        }
        /* The thread state bound to this thread is its own and detached:
           its frames can be read if it belongs to the same interpreter. */
        PyThreadState *bound = frames_of ? PyGILState_GetThisThreadState()
                                         : NULL;
        if (bound != NULL && interp_state(bound->interp) == last_attached) {
            *frames_of = bound;
        }
        return last_attached;
    }
    /* A thread never seen attached: one that Python did not create */
    PyInterpreterState *main_interp = _PyInterpreterState_Main();
    if (main_interp != NULL && is_registered(interp_state(main_interp))) {
        return interp_state(main_interp);
    }
    return NULL;
}

/* Trace a block with no attached thread state.  Return -2 if no
   interpreter takes it. */
static TM_SLOW_PATH int
add_trace_unattached(unsigned int domain, uintptr_t ptr, size_t size)
{
    if (ntracing_hint() == 0) {
        return -2;
    }
    int res = -2;
    lock_registry();
    PyThreadState *frames_of;
    tm_state_t *state = unattached_owner(&frames_of);
    if (state != NULL) {
        stripe_t *stripe = stripe_to_trace(state, ptr);
        lock_stripe(state, stripe, 0);
        if (state->tracing) {
            res = add_trace(state, stripe, frames_of, 0, domain, ptr, size);
        }
        unlock_stripe(state, stripe, 0);
    }
    unlock_registry();
    return res;
}

/* Trace a new block for the interpreter of the calling thread's attached
   thread state, seen tracing, or with none attached, for the interpreter a
   block allocated with no thread state goes to.  Return 0 on success or if
   nobody traces it, -1 on memory error. */
static Py_NO_INLINE int
trace_block(unsigned int domain, uintptr_t ptr, size_t size)
{
    PyThreadState *tstate = _PyThreadState_GET();
    if (tstate == NULL) {
        return add_trace_unattached(domain, ptr, size) == -1 ? -1 : 0;
    }
    tm_state_t *state = interp_state(tstate->interp);
    int res = 0;
    stripe_t *stripe = stripe_to_trace(state, ptr);
    lock_stripe(state, stripe, 1);
    if (state->tracing) {
        res = add_trace(state, stripe, tstate, 1, domain, ptr, size);
    }
    unlock_stripe(state, stripe, 1);
    return res;
}

/* The slow path of untrace_block(), for a block that the calling
   interpreter, own (NULL with no thread state attached), does not trace. */
static TM_SLOW_PATH int
untrace_block_elsewhere(tm_state_t *own, unsigned int domain, uintptr_t ptr,
                        dropped_t *dropped)
{
    int found = 0;
    lock_registry();
    _Py_atomic_add_uint64(&runtime_state.lookups_elsewhere, 1);
    if (own != NULL && !owner_map_made()) {
        /* A second interpreter frees: the map will serve it from now on */
        owner_map_make();
    }
    if (own == NULL) {
        own = unattached_owner(NULL);
        if (own != NULL) {
            found = remove_trace_locked(own, 0, domain, ptr, dropped);
        }
    }
    for (Py_ssize_t i = 0; i < runtime_state.ntracing && !found; i++) {
        tm_state_t *state = runtime_state.tracing[i];
        if (state != own) {
            found = remove_trace_locked(state, 0, domain, ptr, dropped);
        }
    }
    if (!found && runtime_state.leftovers != NULL) {
        /* a block that outlived its interpreter: *dropped says nobody's */
        found = leftovers_untrace(domain, ptr);
    }
    unlock_registry();
    return found;
}

/* Drop the trace of a block from the interpreter that owns it, if any.
   Two interpreters may trace the same block, one of them wrongly: a block
   tracked with the C API and freed without being untracked, its address
   reused.  The caller's interpreter, own, is asked first, or with no
   thread state attached (own NULL), the one a block allocated there would
   go to; the other keeps its trace.  Return 1 if one did, describing the
   trace in *dropped if dropped is not NULL. */
static inline Py_ALWAYS_INLINE int
untrace_block_of(tm_state_t *own, unsigned int domain, uintptr_t ptr,
                 dropped_t *dropped)
{
    uint32_t own_tag = OWNER_NONE;
    if (own != NULL && state_is_tracing(own)) {
        int found = remove_trace_locked(own, 1, domain, ptr, dropped);
        if (found || only_tracer(own)) {
            return found;
        }
        /* Any session of own will do: see owner_tag. */
        own_tag = _Py_atomic_load_uint32_relaxed(&own->owner_tag);
    }
    else if (ntracing_hint() == 0) {
        return 0;
    }
    if (!owner_map_others_may_trace(ptr, own_tag)) {
        /* the common case of an interpreter that does not trace */
        return 0;
    }
    /* Allocated by another interpreter, or by nobody that traces. */
    return untrace_block_elsewhere(own, domain, ptr, dropped);
}


/* The state of the interpreter of the calling thread's attached thread
   state, or NULL if none is attached. */
static inline tm_state_t *
caller_state(void)
{
    PyThreadState *tstate = _PyThreadState_GET();
    return tstate ? interp_state(tstate->interp) : NULL;
}

/* untrace_block_of() the interpreter of the calling thread's attached
   thread state, if any. */
static inline Py_ALWAYS_INLINE int
untrace_block(unsigned int domain, uintptr_t ptr, dropped_t *dropped)
{
    return untrace_block_of(caller_state(), domain, ptr, dropped);
}


/* Put back, as it was, a trace that untrace_block() dropped for a
   realloc() that failed: the block is unchanged, and still belongs to
   whoever traced it, maybe another interpreter.  Not if that one has
   stopped or cleared its traces meanwhile. */
static TM_SLOW_PATH void
restore_trace(unsigned int domain, uintptr_t ptr, const dropped_t *dropped)
{
    tm_state_t *state = dropped->state;
    lock_registry();
    /* A state is only looked at while registered: it may be gone. */
    if (is_registered(state)) {
        lock_state(state);
        /* the trace was in that table, of the stripe of ptr */
        traces_t *traces = find_traces_table(state, domain, ptr);
        size_t old_size;
        if (state->tracing && state->generation == dropped->generation
            && traces != NULL
            && traces_set(traces, ptr, dropped->size, dropped->traceback,
                          &old_size) == 0)
        {
            if (traces->counted) {
                owner_map_add(ptr, state->owner_tag, 1);
            }
            count_traced(state, stripe_to_find(state, ptr), dropped->size);
        }
        unlock_state(state);
    }
    unlock_registry();
}


/* --- Allocator hooks ----------------------------------------------------- */

/* The hooks are installed with the ctx of the allocator they wrap and never
   use it: an allocation racing with PyMem_SetAllocator() in another thread
   may pair the old function with the new ctx or the reverse, and both
   pairs must work.  Each domain has its own hook functions instead.

   They are installed for the whole process while any interpreter traces,
   and those that do not trace must pay as little as can be: the hooks
   decide inline whether a block may be traced, from the attached thread
   state and the owner map, and call the code that traces out of line, so
   that its set-up (the registers it saves) is not paid by the others. */

/* The state of the interpreter of tstate, the calling thread's attached
   thread state, noted as the interpreter last attached. */
static inline tm_state_t *
attached_state(PyThreadState *tstate)
{
    tm_state_t *state = interp_state(tstate->interp);
    last_attached = state;
    return state;
}

/* May the block at ptr (0: none), freed or resized by own's interpreter
   (NULL: no thread state attached), be traced?  By own if it traces, or
   else by another, as the owner map says.  Says yes when in doubt. */
static inline int
may_be_traced(tm_state_t *own, uintptr_t ptr)
{
    return (own == NULL || state_is_tracing(own)
            || (ptr != 0 && ntracing_hint() > 0
                && owner_map_others_may_trace(ptr, OWNER_NONE)));
}

static inline void*
alloc_traced(PyMemAllocatorEx *alloc, int use_calloc,
             size_t nelem, size_t elsize)
{
    reentrant = 1;
    void *ptr = use_calloc ? alloc->calloc(alloc->ctx, nelem, elsize)
                           : alloc->malloc(alloc->ctx, nelem * elsize);
    if (ptr != NULL
        && trace_block(DEFAULT_DOMAIN, (uintptr_t)ptr, nelem * elsize) < 0)
    {
        /* Failed to allocate a trace for the new memory block */
        alloc->free(alloc->ctx, ptr);
        ptr = NULL;
    }
    set_last_allocated(ptr, nelem * elsize);
    reentrant = 0;
    return ptr;
}

static inline void*
hook_alloc(PyMemAllocatorEx *alloc, int use_calloc,
           size_t nelem, size_t elsize)
{
    assert(elsize == 0 || nelem <= SIZE_MAX / elsize);
    if (!reentrant) {
        PyThreadState *tstate = _PyThreadState_GET();
        if (tstate == NULL || state_is_tracing(attached_state(tstate))) {
            return alloc_traced(alloc, use_calloc, nelem, elsize);
        }
    }
    /* Nested in a hook, or for an interpreter that does not trace: a
       nested allocation finds the same (or that tracing has just started,
       and traces it). */
    void *ptr = use_calloc ? alloc->calloc(alloc->ctx, nelem, elsize)
                           : alloc->malloc(alloc->ctx, nelem * elsize);
    set_last_allocated(ptr, nelem * elsize);
    return ptr;
}


/* Resize a block that own's interpreter (NULL: none attached) traces, or
   that another may have traced. */
static Py_NO_INLINE void*
realloc_traced(tm_state_t *own, PyMemAllocatorEx *alloc, void *ptr,
               size_t new_size)
{
    reentrant = 1;
    /* Drop the old trace first: once realloc() returns, another thread may
       be handed the old address and trace it. */
    dropped_t dropped = {NULL};
    int traced = (ptr != NULL && ntracing_hint() > 0
                  && untrace_block_of(own, DEFAULT_DOMAIN, (uintptr_t)ptr,
                                      &dropped));
    void *outer = untraced_block;
    const dropped_t *outer_trace = untraced_trace;
    untraced_block = ptr;
    untraced_trace = &dropped;
    void *ptr2 = alloc->realloc(alloc->ctx, ptr, new_size);
    untraced_block = outer;
    untraced_trace = outer_trace;
    if (ptr2 == NULL) {
        if (traced) {
            /* The block is unchanged: so is its trace. */
            restore_trace(DEFAULT_DOMAIN, (uintptr_t)ptr, &dropped);
        }
    }
    else if ((own == NULL || state_is_tracing(own))
             && trace_block(DEFAULT_DOMAIN, (uintptr_t)ptr2, new_size) < 0)
    {
        if (ptr == NULL) {
            /* Failed to allocate a trace for the new memory block */
            alloc->free(alloc->ctx, ptr2);
            ptr2 = NULL;
        }
        /* else: the block was resized and cannot be given back; it stays
           untraced rather than failing the realloc() */
    }
    /* A resized str or bytes object becomes an object again
       (_Py_NewReference()) with the trace it has just been given. */
    set_last_allocated(ptr2, new_size);
    reentrant = 0;
    return ptr2;
}

static void*
hook_realloc(PyMemAllocatorEx *alloc, void *ptr, size_t new_size)
{
    if (reentrant) {
        /* Example: pymalloc reallocating a large block through
           PyMem_RawRealloc(), which the outer hook has untraced already.
           A traced block moved here (by a finalizer run while a snapshot
           is converted, say) must not leave a stale trace. */
        void *ptr2 = alloc->realloc(alloc->ctx, ptr, new_size);
        if (ptr2 != NULL && ptr != NULL && ptr2 != ptr
            && ptr != untraced_block && ntracing_hint() > 0)
        {
            (void)untrace_block(DEFAULT_DOMAIN, (uintptr_t)ptr, NULL);
        }
        return ptr2;
    }
    PyThreadState *tstate = _PyThreadState_GET();
    tm_state_t *own = tstate ? attached_state(tstate) : NULL;
    if (may_be_traced(own, (uintptr_t)ptr)) {
        return realloc_traced(own, alloc, ptr, new_size);
    }
    void *ptr2 = alloc->realloc(alloc->ctx, ptr, new_size);
    set_last_allocated(ptr2, new_size);
    return ptr2;
}


/* free_traced() over the debug hooks: they check the block when it is
   freed, and report where it was allocated if they find it damaged. */
static TM_SLOW_PATH void
free_reporting_trace(tm_state_t *own, PyMemAllocatorEx *alloc, void *ptr)
{
    dropped_t dropped = {NULL};
    (void)untrace_block_of(own, DEFAULT_DOMAIN, (uintptr_t)ptr, &dropped);
    void *outer = untraced_block;
    const dropped_t *outer_trace = untraced_trace;
    untraced_block = ptr;
    untraced_trace = &dropped;
    alloc->free(alloc->ctx, ptr);
    untraced_block = outer;
    untraced_trace = outer_trace;
}

/* Free a block that own's interpreter (NULL: none attached) traces, or
   that another may have traced. */
static Py_NO_INLINE void
free_traced(tm_state_t *own, PyMemAllocatorEx *alloc, void *ptr)
{
    if (_Py_atomic_load_int_relaxed(&runtime_state.debug_hooks)) {
        free_reporting_trace(own, alloc, ptr);
        return;
    }
    /* Untrace before freeing, for the reason given in realloc_traced(). */
    (void)untrace_block_of(own, DEFAULT_DOMAIN, (uintptr_t)ptr, NULL);
    void *outer = untraced_block;
    untraced_block = ptr;
    alloc->free(alloc->ctx, ptr);
    untraced_block = outer;
}

static void
hook_free(PyMemAllocatorEx *alloc, void *ptr)
{
    if (ptr == NULL) {
        return;
    }
    if ((uintptr_t)ptr == _PyTraceMalloc_last_allocated.start) {
        _PyTraceMalloc_last_allocated.size = 0;
    }
    /* untraced_block: the hook of the outer domain dropped its trace */
    if (ptr != untraced_block) {
        tm_state_t *own = caller_state();
        if (may_be_traced(own, (uintptr_t)ptr)) {
            free_traced(own, alloc, ptr);
            return;
        }
    }
    alloc->free(alloc->ctx, ptr);
}


#define DEFINE_HOOKS(DOMAIN) \
    static void* \
    hook_##DOMAIN##_malloc(void *Py_UNUSED(ctx), size_t size) \
    { \
        return hook_alloc(&allocators.DOMAIN, 0, 1, size); \
    } \
    static void* \
    hook_##DOMAIN##_calloc(void *Py_UNUSED(ctx), size_t nelem, size_t elsize) \
    { \
        return hook_alloc(&allocators.DOMAIN, 1, nelem, elsize); \
    } \
    static void* \
    hook_##DOMAIN##_realloc(void *Py_UNUSED(ctx), void *ptr, size_t new_size) \
    { \
        return hook_realloc(&allocators.DOMAIN, ptr, new_size); \
    } \
    static void \
    hook_##DOMAIN##_free(void *Py_UNUSED(ctx), void *ptr) \
    { \
        hook_free(&allocators.DOMAIN, ptr); \
    } \
    static const PyMemAllocatorEx hooks_##DOMAIN = { \
        NULL, hook_##DOMAIN##_malloc, hook_##DOMAIN##_calloc, \
        hook_##DOMAIN##_realloc, hook_##DOMAIN##_free \
    };

DEFINE_HOOKS(raw)
DEFINE_HOOKS(mem)
DEFINE_HOOKS(obj)

#undef DEFINE_HOOKS


static void
install_hook(PyMemAllocatorDomain domain, PyMemAllocatorEx *saved,
             const PyMemAllocatorEx *hooks)
{
    PyMem_GetAllocator(domain, saved);
    PyMemAllocatorEx alloc = *hooks;
    alloc.ctx = saved->ctx;
    PyMem_SetAllocator(domain, &alloc);
}


/* Called with hooks_mutex held when the first interpreter starts tracing:
   the registry already lists it, so its own allocations are traced from
   here on. */
static void
install_hooks(void)
{
    _Py_atomic_store_int_relaxed(&runtime_state.debug_hooks,
                                 _PyMem_DebugEnabled());
#ifdef TRACE_RAW_MALLOC
    install_hook(PYMEM_DOMAIN_RAW, &allocators.raw, &hooks_raw);
#endif
    install_hook(PYMEM_DOMAIN_MEM, &allocators.mem, &hooks_mem);
    install_hook(PYMEM_DOMAIN_OBJ, &allocators.obj, &hooks_obj);
    _Py_atomic_store_int_relaxed(&runtime_state.new_references, 1);
}


/* Called with hooks_mutex held when the last interpreter stops.  The saved
   allocators stay as they are: a thread may still be running a hook that
   read the old function pointer. */
static void
remove_hooks(void)
{
    _Py_atomic_store_int_relaxed(&runtime_state.new_references, 0);
#ifdef TRACE_RAW_MALLOC
    PyMem_SetAllocator(PYMEM_DOMAIN_RAW, &allocators.raw);
#endif
    PyMem_SetAllocator(PYMEM_DOMAIN_MEM, &allocators.mem);
    PyMem_SetAllocator(PYMEM_DOMAIN_OBJ, &allocators.obj);
}


/* --- The registry of tracing interpreters -------------------------------- */

/* A tag for a new tracing session.  The tags of the registered sessions
   and of the leftovers are skipped; a session that left the registry may
   still be uncounting its traces, but its tag comes round again only
   after 2**32 others.  Called with the registry locked. */
static uint32_t
new_owner_tag(void)
{
    for (;;) {
        uint32_t tag = ++runtime_state.last_owner_tag;
        int in_use = (tag == OWNER_NONE || tag == OWNER_SHARED
                      || leftovers_hold_tag(tag));
        for (Py_ssize_t i = 0; i < runtime_state.ntracing && !in_use; i++) {
            in_use = (runtime_state.tracing[i]->owner_tag == tag);
        }
        if (!in_use) {
            return tag;
        }
    }
}

/* The hooks stay installed while nusers is non-zero.  Called with the
   registry locked, within a registry change (see only_tracer()). */
static void
update_nusers(void)
{
    _Py_atomic_store_ssize_relaxed(
        &runtime_state.nusers,
        runtime_state.ntracing + (runtime_state.leftovers != NULL));
}

/* Called with the registry locked, within a registry change. */
static int
register_state(tm_state_t *state)
{
    if (runtime_state.ntracing == runtime_state.capacity) {
        Py_ssize_t capacity = runtime_state.capacity * 2 + 4;
        tm_state_t **tracing = raw_malloc(capacity * sizeof(tm_state_t *));
        if (tracing == NULL) {
            return -1;
        }
        if (runtime_state.ntracing > 0) {
            memcpy(tracing, runtime_state.tracing,
                   runtime_state.ntracing * sizeof(tm_state_t *));
        }
        raw_free(runtime_state.tracing);
        runtime_state.tracing = tracing;
        runtime_state.capacity = capacity;
    }
    runtime_state.tracing[runtime_state.ntracing] = state;
    _Py_atomic_store_ssize_relaxed(&runtime_state.ntracing,
                                   runtime_state.ntracing + 1);
    update_nusers();
    return 0;
}

/* Called with the registry locked, within a registry change. */
static void
unregister_state(tm_state_t *state)
{
    Py_ssize_t n = runtime_state.ntracing;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (runtime_state.tracing[i] == state) {
            runtime_state.tracing[i] = runtime_state.tracing[n - 1];
            _Py_atomic_store_ssize_relaxed(&runtime_state.ntracing, n - 1);
            update_nusers();
            return;
        }
    }
    Py_UNREACHABLE();
}



/* --- Tables of one interpreter ------------------------------------------- */

/* The tables of a tracing session: built without any lock held, swapped
   into a state under its mutex, destroyed without any lock held. */
typedef struct {
    /* Per session, for its traceback limit: the stripes' caches */
    capture_cache_t *caches[NSTRIPES];
    /* Per session, and replaced by clear_traces(); the stripes' traces */
    interned_t *interned;
    traces_t *traces[NSTRIPES];
    _Py_hashtable_t *domains;
} tables_t;

static void
tables_destroy(tables_t *tables)
{
    for (int i = 0; i < NSTRIPES; i++) {
        if (tables->traces[i] != NULL) {
            drop_traces(tables->traces[i]);
        }
        if (tables->caches[i] != NULL) {
            capture_cache_destroy(tables->caches[i]);
        }
    }
    if (tables->domains != NULL) {
        _Py_hashtable_destroy(tables->domains);
    }
    if (tables->interned != NULL) {
        interned_destroy(tables->interned);
    }
}

static void tables_discard(tables_t *tables);

/* New tables; with max_nframe == 0, only those clear_traces() replaces.
   The other stripes than the first get theirs when first used. */
static int
tables_new(tables_t *tables, int max_nframe)
{
    memset(tables, 0, sizeof(*tables));
    if (max_nframe) {
        tables->caches[0] = capture_cache_new(max_nframe);
    }
    tables->interned = interned_new();
    tables->traces[0] = traces_new();
    tables->domains = domains_table_new();
    if ((max_nframe && tables->caches[0] == NULL)
        || tables->interned == NULL || tables->traces[0] == NULL
        || tables->domains == NULL)
    {
        tables_discard(tables);
        return -1;
    }
    return 0;
}

/* Destroy new tables that were not swapped into a state. */
static void
tables_discard(tables_t *tables)
{
    if (tables->interned != NULL) {
        tables->interned->refcnt = 0;
    }
    tables_destroy(tables);
}

/* Exchange the traces and interned tables of a state with *tables; what
   comes out is to be destroyed once nothing else references it.  With
   session != 0, the per-session caches are exchanged too.  Called with
   all the state's locks held. */
static void
tables_swap(tm_state_t *state, tables_t *tables, int session)
{
    for (int i = 0; i < NSTRIPES; i++) {
        stripe_t *stripe = state_stripe(state, i);
        traces_t *traces = stripe->traces;
        stripe->traces = tables->traces[i];
        if (stripe->traces != NULL) {
            /* A new table is empty: it can start counting at once. */
            stripe->traces->counted = owner_map_made();
        }
        tables->traces[i] = traces;
        if (session) {
            capture_cache_t *cache = stripe->cache;
            stripe->cache = tables->caches[i];
            tables->caches[i] = cache;
        }
        else if (stripe->cache != NULL) {
            forget_cached_tracebacks(stripe->cache);
        }
    }
    _Py_hashtable_t *domains = state->domains;
    interned_t *interned = state->interned;
    state->domains = tables->domains;
    state->interned = tables->interned;
    tables->domains = domains;
    tables->interned = interned ? interned_release(interned) : NULL;
    state->generation++;
}


/* A code object of the calling interpreter is dying: its address may be
   reused by another one, so what the capture cache holds is no longer
   valid.  Called for every interpreter, tracing or not: it is cheap. */
void
_PyTraceMalloc_ForgetCode(void)
{
    tm_state_t *state = interp_state(_PyInterpreterState_GET());
    _Py_atomic_add_uint64(&state->code_epoch, 1);
}


/* --- Lifecycle ----------------------------------------------------------- */

PyStatus
_PyTraceMalloc_Init(void)
{
    PyMem_GetAllocator(PYMEM_DOMAIN_RAW, &allocators.raw);

    traceback_t *empty = &runtime_state.empty_traceback;
    empty->nframe = 1;
    empty->total_nframe = 1;
    empty->index = 0;
    /* borrowed reference to a static string shared by all interpreters */
    empty->frames[0].filename = &_Py_STR(anon_unknown);
    empty->frames[0].lineno = 0;
    empty->hash = traceback_hash(empty);
    return _PyStatus_OK();
}


int
_PyTraceMalloc_Start(int max_nframe)
{
    if (max_nframe < 1 || (unsigned long) max_nframe > MAX_NFRAME) {
        PyErr_Format(PyExc_ValueError,
                     "the number of frames must be in range [1; %lu]",
                     MAX_NFRAME);
        return -1;
    }
    tm_state_t *state = interp_state(_PyInterpreterState_GET());
    if (state_is_tracing(state)) {
        /* already tracing: do nothing, as before */
        return 0;
    }

    tables_t tables;
    if (tables_new(&tables, max_nframe) < 0) {
        PyErr_NoMemory();
        return -1;
    }

    PyMutex_Lock(&runtime_state.hooks_mutex);
    int res = 0;
    lock_registry();
    if (state->tracing) {
        /* another thread of this interpreter started it meanwhile */
        unlock_registry();
        goto done;
    }
    /* The state joins the registry and starts tracing at once for those
       who look at either: see stop_tracing(). */
    registry_change_begin();
    lock_state(state);
    if (register_state(state) < 0) {
        unlock_state(state);
        registry_change_end();
        unlock_registry();
        PyErr_NoMemory();
        res = -1;
        goto done;
    }
    tables_swap(state, &tables, 1);
    _Py_atomic_store_uint32_relaxed(&state->owner_tag, new_owner_tag());
    state->max_nframe = max_nframe;
    reset_traced(state);
    _Py_atomic_store_int_relaxed(&state->tracing, 1);
    unlock_state(state);
    registry_change_end();
    int first = (runtime_state.nusers == 1);
    unlock_registry();

    if (first) {
        install_hooks();
    }
done:
    PyMutex_Unlock(&runtime_state.hooks_mutex);
    tables_discard(&tables);
    return res;
}


/* Stop tracing in the interpreter of the state, and free its tables.  The
   filenames are released, so that interpreter's thread state is attached
   (or release_filenames is 0, and they are leaked). */
static void
stop_tracing(tm_state_t *state, int release_filenames)
{
    PyMutex_Lock(&runtime_state.hooks_mutex);
    lock_registry();
    if (!state->tracing) {
        unlock_registry();
        PyMutex_Unlock(&runtime_state.hooks_mutex);
        return;
    }
    /* Leave the registry and drop the traces at once, under both locks:
       an untrack that finds the state gone from the registry (or reads
       ntracing == 0) must not find its traces afterwards. */
    tables_t tables;
    memset(&tables, 0, sizeof(tables));
    registry_change_begin();
    lock_state(state);
    unregister_state(state);
    int last = (runtime_state.nusers == 0);
    _Py_atomic_store_int_relaxed(&state->tracing, 0);
    tables_swap(state, &tables, 1);
    reset_traced(state);
    unlock_state(state);
    registry_change_end();
    unlock_registry();

    if (last) {
        remove_hooks();
    }
    PyMutex_Unlock(&runtime_state.hooks_mutex);

    if (!release_filenames && tables.interned != NULL) {
        /* Leak the filenames rather than touch another interpreter's
           objects: drop the table without calling its destructor. */
        tables.interned->filenames->key_destroy_func = NULL;
    }
    tables_destroy(&tables);
}


void
_PyTraceMalloc_Stop(void)
{
    stop_tracing(interp_state(_PyInterpreterState_GET()), 1);
}


void
_PyTraceMalloc_ForgetInterpreter(PyInterpreterState *interp)
{
    tm_state_t *state = interp_state(interp);
    PyThreadState *tstate = _PyThreadState_GET();
    stop_tracing(state, tstate != NULL && tstate->interp == interp);
}


/* --- Leftovers ----------------------------------------------------------- */

/* A filename in UTF-8 ("surrogatepass": lone surrogates are kept), in
   memory of the raw allocator.  Creates no object, so that it can run with
   the locks held. */
static char *
filename_to_utf8(PyObject *filename)
{
    assert(PyUnicode_Check(filename));
    int kind = PyUnicode_KIND(filename);
    const void *data = PyUnicode_DATA(filename);
    Py_ssize_t length = PyUnicode_GET_LENGTH(filename);
    size_t size = 1;
    for (Py_ssize_t i = 0; i < length; i++) {
        Py_UCS4 ch = PyUnicode_READ(kind, data, i);
        size += (ch < 0x80) ? 1 : (ch < 0x800) ? 2 : (ch < 0x10000) ? 3 : 4;
    }
    unsigned char *utf8 = raw_malloc(size);
    if (utf8 == NULL) {
        return NULL;
    }
    unsigned char *p = utf8;
    for (Py_ssize_t i = 0; i < length; i++) {
        Py_UCS4 ch = PyUnicode_READ(kind, data, i);
        if (ch < 0x80) {
            *p++ = (unsigned char)ch;
            continue;
        }
        int ntail = (ch < 0x800) ? 1 : (ch < 0x10000) ? 2 : 3;
        static const unsigned char lead[4] = {0, 0xc0, 0xe0, 0xf0};
        *p++ = (unsigned char)(lead[ntail] | (ch >> (6 * ntail)));
        for (int shift = 6 * (ntail - 1); shift >= 0; shift -= 6) {
            *p++ = (unsigned char)(0x80 | ((ch >> shift) & 0x3f));
        }
    }
    *p = '\0';
    return (char *)utf8;
}

static void
leftover_tracebacks_destroy(leftover_tracebacks_t *tracebacks)
{
    if (tracebacks->by_index != NULL) {
        for (uint32_t i = 0; i < tracebacks->nindex; i++) {
            raw_free(tracebacks->by_index[i]);
        }
        raw_free(tracebacks->by_index);
    }
    if (tracebacks->filenames != NULL) {
        for (size_t i = 0; i < tracebacks->nfilenames; i++) {
            raw_free(tracebacks->filenames[i]);
        }
        raw_free(tracebacks->filenames);
    }
    raw_free(tracebacks);
}

/* Called with the registry locked. */
static void
leftover_tracebacks_release(leftover_tracebacks_t *tracebacks)
{
    assert(tracebacks->refcnt > 0);
    if (--tracebacks->refcnt == 0) {
        leftover_tracebacks_destroy(tracebacks);
    }
}

/* The copy of a filename, made once per filename (map: filename => copy).
   NULL on memory error. */
static const char *
leftover_filename(leftover_tracebacks_t *tracebacks, _Py_hashtable_t *map,
                  PyObject *filename, size_t capacity)
{
    char *utf8 = _Py_hashtable_get(map, filename);
    if (utf8 != NULL) {
        return utf8;
    }
    assert(tracebacks->nfilenames < capacity);
    if (tracebacks->nfilenames == capacity) {
        return NULL;
    }
    utf8 = filename_to_utf8(filename);
    if (utf8 == NULL) {
        return NULL;
    }
    tracebacks->filenames[tracebacks->nfilenames++] = utf8;
    tracebacks->memory += strlen(utf8) + 1;
    if (_Py_hashtable_set(map, filename, utf8) < 0) {
        return NULL;
    }
    return utf8;
}

static leftover_traceback_t *
leftover_traceback_new(leftover_tracebacks_t *tracebacks, _Py_hashtable_t *map,
                       size_t capacity, const traceback_t *traceback)
{
    size_t size = LEFTOVER_TRACEBACK_SIZE(traceback->nframe);
    leftover_traceback_t *copy = raw_malloc(size);
    if (copy == NULL) {
        return NULL;
    }
    tracebacks->memory += size;
    copy->nframe = traceback->nframe;
    copy->total_nframe = traceback->total_nframe;
    for (int i = 0; i < traceback->nframe; i++) {
        const frame_t *frame = &traceback->frames[i];
        copy->frames[i].lineno = frame->lineno;
        copy->frames[i].filename = leftover_filename(tracebacks, map,
                                                     frame->filename,
                                                     capacity);
        if (copy->frames[i].filename == NULL) {
            raw_free(copy);
            return NULL;
        }
    }
    return copy;
}

/* Copies of the interned tracebacks of an interpreter that has just
   stopped tracing that its traces use (used[index] != 0), with the same
   indexes, which outlive its objects.  Called with the registry locked:
   interned belongs to no state any more, so it does not change. */
static leftover_tracebacks_t *
leftover_tracebacks_new(const interned_t *interned, const uint8_t *used)
{
    leftover_tracebacks_t *tracebacks = allocators.raw.calloc(
        allocators.raw.ctx, 1, sizeof(leftover_tracebacks_t));
    if (tracebacks == NULL) {
        return NULL;
    }
    tracebacks->refcnt = 1;
    /* the interned filenames, and "<unknown>" */
    size_t capacity = _Py_hashtable_len(interned->filenames) + 1;
    tracebacks->filenames = raw_malloc(capacity * sizeof(char *));
    tracebacks->by_index = allocators.raw.calloc(
        allocators.raw.ctx, interned->nindex, sizeof(leftover_traceback_t *));
    _Py_hashtable_t *map = hashtable_new(_Py_hashtable_hash_ptr,
                                         _Py_hashtable_compare_direct,
                                         NULL, NULL);
    if (tracebacks->filenames == NULL || tracebacks->by_index == NULL
        || map == NULL)
    {
        goto error;
    }
    tracebacks->nindex = interned->nindex;
    tracebacks->memory = (sizeof(leftover_tracebacks_t)
                          + capacity * sizeof(char *)
                          + interned->nindex * sizeof(void *));
    for (uint32_t i = 0; i < interned->nindex; i++) {
        if (!used[i]) {
            continue;
        }
        tracebacks->by_index[i] = leftover_traceback_new(
            tracebacks, map, capacity, interned->by_index[i]);
        if (tracebacks->by_index[i] == NULL) {
            goto error;
        }
    }
    _Py_hashtable_destroy(map);
    return tracebacks;

error:
    if (map != NULL) {
        _Py_hashtable_destroy(map);
    }
    leftover_tracebacks_destroy(tracebacks);
    return NULL;
}

/* Call visit(arg, domain, size, traceback index) for each trace of a
   table: of the leftovers, or of a snapshot being copied. */
typedef void (*trace_visitor_t)(void *arg, unsigned int domain, size_t size,
                                uint32_t traceback);

typedef struct {
    trace_visitor_t visit;
    void *arg;
    unsigned int domain;
} domain_visit_t;

static void
visit_trace(void *arg, uintptr_t Py_UNUSED(ptr), size_t size,
            uint32_t traceback)
{
    domain_visit_t *args = arg;
    args->visit(args->arg, args->domain, size, traceback);
}

static void
traces_visit(traces_t *traces, unsigned int domain, trace_visitor_t visit,
             void *arg)
{
    domain_visit_t args = {visit, arg, domain};
    traces_foreach(traces, visit_trace, &args);
}

static int
visit_domain(_Py_hashtable_t *domains, const void *key, const void *value,
             void *user_data)
{
    domain_visit_t *args = user_data;
    traces_visit((traces_t *)value, (unsigned int)FROM_PTR(key),
                 args->visit, args->arg);
    return 0;
}

/* Visit every trace of the default domain's tables and of the others. */
static void
tables_visit(traces_t *const traces[NSTRIPES], _Py_hashtable_t *domains,
             trace_visitor_t visit, void *arg)
{
    for (int i = 0; i < NSTRIPES; i++) {
        if (traces[i] != NULL) {
            traces_visit(traces[i], DEFAULT_DOMAIN, visit, arg);
        }
    }
    domain_visit_t args = {visit, arg, DEFAULT_DOMAIN};
    _Py_hashtable_foreach(domains, visit_domain, &args);
}

/* Visit every trace of a set.  Called with the registry locked. */
static void
leftovers_visit(leftovers_t *left, trace_visitor_t visit, void *arg)
{
    if (left->count != 0) {
        tables_visit(left->traces, left->domains, visit, arg);
    }
}

static void
mark_traceback_used(void *arg, unsigned int domain, size_t size,
                    uint32_t traceback)
{
    ((uint8_t *)arg)[traceback] = 1;
}

static int count_domain(_Py_hashtable_t *domains, const void *key,
                        const void *value, void *user_data);

/* Keep the traces of tables that a state has just given up as the
   leftovers left, with copies of their tracebacks; the traces themselves
   are taken as they are.  Return -1 if there is nothing to keep, or no
   memory to keep it with: the tables are then destroyed as at any stop.
   Called with the registry locked. */
static int
leftovers_take(leftovers_t *left, tables_t *tables)
{
    if (tables->domains == NULL || tables->interned == NULL) {
        /* interned is NULL if a conversion still held it: impossible once
           the interpreter's last thread is ending, but then keep nothing */
        return -1;
    }
    size_t count = tables_count(tables->traces, tables->domains);
    if (count == 0) {
        return -1;
    }
    /* Most tracebacks interned during the interpreter's life are of
       blocks long freed: copy only those of the leftovers. */
    uint8_t *used = allocators.raw.calloc(allocators.raw.ctx,
                                          tables->interned->nindex, 1);
    if (used == NULL) {
        return -1;
    }
    tables_visit(tables->traces, tables->domains, mark_traceback_used, used);
    left->tracebacks = leftover_tracebacks_new(tables->interned, used);
    raw_free(used);
    if (left->tracebacks == NULL) {
        return -1;
    }
    left->count = count;
    for (int i = 0; i < NSTRIPES; i++) {
        left->traces[i] = tables->traces[i];
        tables->traces[i] = NULL;
        if (left->traces[i] != NULL) {
            /* The survivors of a finalization lie far apart */
            traces_compact(left->traces[i]);
        }
    }
    left->domains = tables->domains;
    tables->domains = NULL;
    return 0;
}

/* Free the tables of a set, whose traces, if any, leave the owner map.
   Called with the registry locked. */
static void
leftovers_free_tables(leftovers_t *left)
{
    for (int i = 0; i < NSTRIPES; i++) {
        if (left->traces[i] != NULL) {
            drop_traces(left->traces[i]);
            left->traces[i] = NULL;
        }
    }
    if (left->domains != NULL) {
        _Py_hashtable_destroy(left->domains);
        left->domains = NULL;
    }
    if (left->tracebacks != NULL) {
        leftover_tracebacks_release(left->tracebacks);
        left->tracebacks = NULL;
    }
}

/* Remove the trace of ptr from a set of leftovers, storing its size in
   *size; return the table it was in, or NULL if the set had none. */
static traces_t *
leftovers_pop(leftovers_t *left, unsigned int domain, uintptr_t ptr,
              size_t *size)
{
    if (domain != DEFAULT_DOMAIN) {
        traces_t *traces = _Py_hashtable_get(left->domains, TO_PTR(domain));
        return (traces != NULL && traces_pop(traces, ptr, size, NULL)
                ? traces : NULL);
    }
    /* The stripes of the segments went with the interpreter: look in
       each. */
    for (int i = 0; i < NSTRIPES; i++) {
        traces_t *traces = left->traces[i];
        if (traces != NULL && traces_pop(traces, ptr, size, NULL)) {
            return traces;
        }
    }
    return NULL;
}

/* Remove the trace of a freed block from the leftovers, if there; return
   1 if it was.  Called with the registry locked, by a hook: the list does
   not change, but a set that loses its last trace frees its tables. */
static int
leftovers_untrace(unsigned int domain, uintptr_t ptr)
{
    for (leftovers_t *left = runtime_state.leftovers; left != NULL;
         left = left->next)
    {
        if (left->count == 0) {
            continue;
        }
        size_t size;
        traces_t *traces = leftovers_pop(left, domain, ptr, &size);
        if (traces == NULL) {
            continue;
        }
        if (traces->counted) {
            owner_map_remove(ptr, 1);
        }
        left->count--;
        left->size -= size;
        runtime_state.leftover_traces--;
        if (left->count == 0) {
            leftovers_free_tables(left);
        }
        return 1;
    }
    return 0;
}

/* Do leftovers still count traces in the owner map under tag?  Called with
   the registry locked. */
static int
leftovers_hold_tag(uint32_t tag)
{
    for (leftovers_t *left = runtime_state.leftovers; left != NULL;
         left = left->next)
    {
        if (left->count != 0 && left->owner_tag == tag) {
            return 1;
        }
    }
    return 0;
}

/* Unlink *link from the list, and free it.  Called with hooks_mutex and the
   registry locked, within a registry change; update_nusers() to follow. */
static void
leftovers_unlink(leftovers_t **link, int count_dropped)
{
    leftovers_t *left = *link;
    *link = left->next;
    if (runtime_state.last_leftovers == left) {
        runtime_state.last_leftovers = NULL;
        for (leftovers_t *l = runtime_state.leftovers; l != NULL;
             l = l->next)
        {
            runtime_state.last_leftovers = l;
        }
    }
    runtime_state.nleftovers--;
    runtime_state.leftover_traces -= left->count;
    if (count_dropped && left->count != 0) {
        runtime_state.dropped_leftovers++;
        runtime_state.dropped_leftover_traces += left->count;
    }
    leftovers_free_tables(left);
    raw_free(left);
}

/* Add a set, drop the sets emptied by frees, and the oldest ones beyond the
   caps: the newest set is always kept.  Called as leftovers_unlink(). */
static void
leftovers_add(leftovers_t *left)
{
    left->next = NULL;
    if (runtime_state.last_leftovers != NULL) {
        runtime_state.last_leftovers->next = left;
    }
    else {
        runtime_state.leftovers = left;
    }
    runtime_state.last_leftovers = left;
    runtime_state.nleftovers++;
    runtime_state.leftover_traces += left->count;

    leftovers_t **link = &runtime_state.leftovers;
    while (*link != NULL) {
        if ((*link)->count == 0) {
            leftovers_unlink(link, 0);
        }
        else {
            link = &(*link)->next;
        }
    }
    while (runtime_state.leftovers != runtime_state.last_leftovers
           && (runtime_state.nleftovers > MAX_LEFTOVER_SETS
               || runtime_state.leftover_traces > MAX_LEFTOVER_TRACES))
    {
        leftovers_unlink(&runtime_state.leftovers, 1);
    }
}

/* Called as leftovers_unlink(). */
static void
leftovers_clear(void)
{
    while (runtime_state.leftovers != NULL) {
        leftovers_unlink(&runtime_state.leftovers, 0);
    }
    runtime_state.dropped_leftovers = 0;
    runtime_state.dropped_leftover_traces = 0;
}


void
_PyTraceMalloc_EndInterpreter(void)
{
    PyInterpreterState *interp = _PyInterpreterState_GET();
    tm_state_t *state = interp_state(interp);
    if (!state_is_tracing(state)) {
        return;
    }
    leftovers_t *left = allocators.raw.calloc(allocators.raw.ctx, 1,
                                              sizeof(leftovers_t));
    if (left == NULL) {
        stop_tracing(state, 1);
        return;
    }
    tables_t tables;
    memset(&tables, 0, sizeof(tables));

    PyMutex_Lock(&runtime_state.hooks_mutex);
    lock_registry();
    if (!state->tracing) {
        unlock_registry();
        PyMutex_Unlock(&runtime_state.hooks_mutex);
        raw_free(left);
        return;
    }
    /* As in stop_tracing(), but the traces move to the leftovers within
       the same registry change: a free of one of them, which waits for
       the registry lock, finds it there. */
    registry_change_begin();
    lock_state(state);
    unregister_state(state);
    _Py_atomic_store_int_relaxed(&state->tracing, 0);
    tables_swap(state, &tables, 1);
    left->interp_id = interp->id;
    left->max_nframe = state->max_nframe;
    left->owner_tag = state->owner_tag;
    left->size = left->ended_size = traced_now(state);
    reset_traced(state);
    unlock_state(state);
    if (leftovers_take(left, &tables) == 0) {
        leftovers_add(left);
        left = NULL;
    }
    update_nusers();
    registry_change_end();
    int last = (runtime_state.nusers == 0);
    unlock_registry();

    if (last) {
        remove_hooks();
    }
    PyMutex_Unlock(&runtime_state.hooks_mutex);
    raw_free(left);
    tables_destroy(&tables);
}


void
_PyTraceMalloc_ClearLeftovers(void)
{
    PyMutex_Lock(&runtime_state.hooks_mutex);
    lock_registry();
    int had = (runtime_state.leftovers != NULL);
    registry_change_begin();
    leftovers_clear();
    update_nusers();
    registry_change_end();
    int last = (had && runtime_state.nusers == 0);
    unlock_registry();
    if (last) {
        remove_hooks();
    }
    PyMutex_Unlock(&runtime_state.hooks_mutex);
}


void
_PyTraceMalloc_Fini(void)
{
    /* Every interpreter has stopped by now, unless one was never finalized:
       its tables are leaked, but the hooks must go, and the leftovers. */
    PyMutex_Lock(&runtime_state.hooks_mutex);
    lock_registry();
    int installed = (runtime_state.nusers > 0);
    registry_change_begin();
    leftovers_clear();
    _Py_atomic_store_ssize_relaxed(&runtime_state.ntracing, 0);
    update_nusers();
    registry_change_end();
    raw_free(runtime_state.tracing);
    runtime_state.tracing = NULL;
    runtime_state.capacity = 0;
    unlock_registry();
    if (installed) {
        remove_hooks();
    }
    PyMutex_Unlock(&runtime_state.hooks_mutex);
}


/* --- fork() -------------------------------------------------------------- */

/* The state of the main interpreter, locked with the registered ones even
   if it does not trace: it is the one the child keeps. */
static tm_state_t *
main_state(void)
{
    PyInterpreterState *interp = _PyInterpreterState_Main();
    return interp != NULL ? interp_state(interp) : NULL;
}

/* Called last before fork(), with the thread state attached: no other
   thread may then hold a lock of tracemalloc, nor be halfway through
   changing what one protects. */
void
_PyTraceMalloc_BeforeFork(void)
{
    /* Nobody waits for anything while holding one of these, so they need
       not detach (see the lock order). */
    PyMutex_LockFlags(&runtime_state.hooks_mutex, _Py_LOCK_DONT_DETACH);
    lock_registry();
    tm_state_t *main = main_state();
    if (main != NULL && !is_registered(main)) {
        lock_state(main);
    }
    for (Py_ssize_t i = 0; i < runtime_state.ntracing; i++) {
        lock_state(runtime_state.tracing[i]);
    }
}

/* Called first after fork() in the parent. */
void
_PyTraceMalloc_AfterFork_Parent(void)
{
    tm_state_t *main = main_state();
    if (main != NULL && !is_registered(main)) {
        unlock_state(main);
    }
    for (Py_ssize_t i = 0; i < runtime_state.ntracing; i++) {
        unlock_state(runtime_state.tracing[i]);
    }
    unlock_registry();
    PyMutex_Unlock(&runtime_state.hooks_mutex);
}

/* A lock held by this thread in a child of fork(): other threads of the
   parent may have been waiting for it, and are gone. */
static void
reinit_state_lock(tm_state_t *state)
{
#ifdef Py_GIL_DISABLED
    _PyMutex_at_fork_reinit(&state->mutex);
    for (int i = 0; i < NSTRIPES; i++) {
        state_stripe(state, i)->lock = (_PyTraceMalloc_SpinLock){0};
    }
#else
    state->mutex = (_PyTraceMalloc_Lock){0};
#endif
}

/* Called first after fork() in the child, where this thread holds every
   lock of tracemalloc (the other threads are gone), before the other
   interpreters are deleted: their states leave the registry, their tables
   are freed, and their filenames leaked (their objects are not to be
   touched). */
void
_PyTraceMalloc_AfterFork_Child(void)
{
    tm_state_t *main = main_state();
    if (main != NULL) {
        reinit_state_lock(main);
    }
    for (Py_ssize_t i = 0; i < runtime_state.ntracing; i++) {
        reinit_state_lock(runtime_state.tracing[i]);
    }
    _PyMutex_at_fork_reinit(&runtime_state.mutex);
    _PyMutex_at_fork_reinit(&runtime_state.hooks_mutex);

    for (;;) {
        tm_state_t *other = NULL;
        lock_registry();
        for (Py_ssize_t i = 0; i < runtime_state.ntracing; i++) {
            if (runtime_state.tracing[i] != main) {
                other = runtime_state.tracing[i];
                break;
            }
        }
        unlock_registry();
        if (other == NULL) {
            break;
        }
        stop_tracing(other, 0);
    }
}


void
_PyTraceMalloc_LockRegistryForTesting(int lock)
{
    if (lock) {
        lock_registry();
    }
    else {
        unlock_registry();
    }
}

uint64_t
_PyTraceMalloc_GetLookupsElsewhere(void)
{
    return _Py_atomic_load_uint64_relaxed(&runtime_state.lookups_elsewhere);
}

int
_PyTraceMalloc_LockBiasedForTesting(void)
{
#ifdef Py_GIL_DISABLED
    return -1;
#else
    if (!heavy_barrier_available()) {
        return -1;
    }
    tm_state_t *state = interp_state(_PyInterpreterState_GET());
    return _Py_atomic_load_int_relaxed(&state->mutex.biased);
#endif
}


int
_PyTraceMalloc_StripeForTesting(uintptr_t ptr)
{
    tm_state_t *state = interp_state(_PyInterpreterState_GET());
    stripe_t *stripe = stripe_to_find(state, ptr);
    return stripe != NULL ? (int)(stripe - state_stripe(state, 0)) : -1;
}


/* --- The traces table on its own, for _testinternalcapi ------------------ */

traces_t *
_PyTraceMalloc_TableNew(void)
{
    return traces_new();
}

void
_PyTraceMalloc_TableDestroy(traces_t *traces)
{
    traces_destroy(traces);
}

int
_PyTraceMalloc_TableSet(traces_t *traces, uintptr_t ptr, size_t size,
                        uint32_t traceback, size_t *old_size)
{
    return traces_set(traces, ptr, size, traceback, old_size);
}

int
_PyTraceMalloc_TableGet(traces_t *traces, uintptr_t ptr, size_t *size,
                        uint32_t *traceback)
{
    return traces_get(traces, ptr, size, traceback);
}

int
_PyTraceMalloc_TablePop(traces_t *traces, uintptr_t ptr, size_t *size,
                        uint32_t *traceback)
{
    return traces_pop(traces, ptr, size, traceback);
}

size_t
_PyTraceMalloc_TableCount(traces_t *traces)
{
    return traces->count;
}

size_t
_PyTraceMalloc_TableMemory(traces_t *traces)
{
    return traces_memory(traces);
}

void
_PyTraceMalloc_TableForEach(traces_t *traces,
                            _PyTraceMalloc_TableVisitor visit, void *arg)
{
    traces_foreach(traces, visit, arg);
}

int
_PyTraceMalloc_TableCheck(traces_t *traces, const char **what)
{
    return traces_check(traces, what);
}


/* --- Reused objects ------------------------------------------------------ */

/* The work of _PyTraceMalloc_NewReference().  The block keeps its size
   and gets the current traceback from trace_block(), as a new block
   would: with a capture of its own, inlined, this function took about as
   many lines of the instruction cache as trace_block() (see
   InternalDocs).  The object is this thread's, so nobody frees its block
   between the two locks; if tracing stops meanwhile, trace_block() does
   nothing, and if another thread clears the traces, the block is traced
   anew, as a block allocated then would be. */
static inline int
retrace_object(uintptr_t ptr)
{
    PyThreadState *tstate = _PyThreadState_GET();
    tm_state_t *state = interp_state(tstate->interp);
    if (!state_is_tracing(state)) {
        return -1;
    }

    stripe_t *stripe = stripe_to_find(state, ptr);
    if (stripe == NULL) {
        return -1;
    }
    int traced = 0;
    size_t size = 0;
    lock_stripe(state, stripe, 1);
    traces_t *traces = stripe->traces;
    if (state->tracing && traces != NULL) {
        uint32_t old_traceback;
        traced = traces_get(traces, ptr, &size, &old_traceback);
    }
    unlock_stripe(state, stripe, 1);
    if (!traced) {
        /* cannot track the object, its memory block size is unknown */
        return -1;
    }
    return trace_block(DEFAULT_DOMAIN, ptr, size);
}

/* The slow path of _PyTraceMalloc_OnNewReference(), for an object created
   in a block other than the one this thread allocated last: if the block
   is already traced by the calling interpreter, update its trace with the
   current Python traceback (an object taken from a free list is
   "allocated" again without a call to the allocator).

   Do nothing if the interpreter does not trace or if the object memory
   block is not already traced. */
void
_PyTraceMalloc_NewReference(PyObject *op)
{
    PyTypeObject *type = Py_TYPE(op);
    const size_t presize = _PyType_PreHeaderSize(type);
    (void)retrace_object((uintptr_t)((char *)op - presize));
}


/* --- C API --------------------------------------------------------------- */

int
PyTraceMalloc_Track(unsigned int domain, uintptr_t ptr, size_t size)
{
    PyThreadState *tstate = _PyThreadState_GET();
    if (tstate == NULL) {
        return add_trace_unattached(domain, ptr, size);
    }
    tm_state_t *state = interp_state(tstate->interp);
    last_attached = state;
    int res = -2;
    stripe_t *stripe = stripe_to_trace(state, ptr);
    lock_stripe(state, stripe, 0);
    if (state->tracing) {
        res = add_trace(state, stripe, tstate, 1, domain, ptr, size);
    }
    unlock_stripe(state, stripe, 0);
    return res;
}


int
PyTraceMalloc_Untrack(unsigned int domain, uintptr_t ptr)
{
    if (untrace_block(domain, ptr, NULL)) {
        return 0;
    }
    /* Nobody had it: -2 if the caller's interpreter does not trace. */
    PyThreadState *tstate = _PyThreadState_GET();
    if (tstate != NULL) {
        return state_is_tracing(interp_state(tstate->interp)) ? 0 : -2;
    }
    if (ntracing_hint() == 0) {
        return -2;
    }
    lock_registry();
    int res = unattached_owner(NULL) != NULL ? 0 : -2;
    unlock_registry();
    return res;
}


/* --- Converting traces to Python objects --------------------------------- */

static PyObject*
frame_to_pyobject(frame_t *frame)
{
    PyObject *lineno_obj = PyLong_FromUnsignedLong(frame->lineno);
    if (lineno_obj == NULL) {
        return NULL;
    }
    PyObject *frame_obj = PyTuple_New(2);
    if (frame_obj == NULL) {
        Py_DECREF(lineno_obj);
        return NULL;
    }
    PyTuple_SET_ITEM(frame_obj, 0, Py_NewRef(frame->filename));
    PyTuple_SET_ITEM(frame_obj, 1, lineno_obj);
    return frame_obj;
}


static PyObject*
traceback_to_pyobject(traceback_t *traceback)
{
    PyObject *frames = PyTuple_New(traceback->nframe);
    if (frames == NULL) {
        return NULL;
    }
    for (int i=0; i < traceback->nframe; i++) {
        PyObject *frame = frame_to_pyobject(&traceback->frames[i]);
        if (frame == NULL) {
            Py_DECREF(frames);
            return NULL;
        }
        PyObject_GC_UnTrack(frame);     /* a str and an int: no cycle */
        PyTuple_SET_ITEM(frames, i, frame);
    }
    PyObject_GC_UnTrack(frames);
    return frames;
}


/* A trace copied for a snapshot */
typedef struct {
    traceback_t *traceback;
    size_t size;
    unsigned int domain;
} snapshot_trace_t;

typedef struct {
    snapshot_trace_t *traces;
    size_t count;
    size_t capacity;
    /* number of interned tracebacks when the traces were copied */
    uint32_t ntracebacks;
} snapshot_t;


/* Objects shared by the tuples of a snapshot: one tuple of frames per
   traceback, and one (domain, size, traceback, total_nframe) tuple per
   recent (domain, size, traceback).  The blocks allocated at one place
   mostly have a few sizes, so that a snapshot of a million traces holds
   far fewer tuples than traces: the tuples are immutable, and the trace
   they describe is all that is compared. */
#define TRACE_CACHE 4096    /* a power of two */

typedef struct {
    const traceback_t *traceback;   /* NULL if the entry is empty */
    size_t size;
    unsigned int domain;
    PyObject *tuple;
} trace_entry_t;

typedef struct {
    PyObject **tracebacks;      /* by traceback index */
    trace_entry_t traces[TRACE_CACHE];
} converter_t;

static PyObject *
convert_traceback(converter_t *conv, traceback_t *traceback)
{
    PyObject **cached = &conv->tracebacks[traceback->index];
    if (*cached == NULL) {
        *cached = traceback_to_pyobject(traceback);
    }
    return Py_XNewRef(*cached);
}

static PyObject*
trace_to_pyobject(converter_t *conv, const snapshot_trace_t *trace)
{
    PyObject *tuple = PyTuple_New(4);
    if (tuple == NULL) {
        return NULL;
    }
    PyObject *items[4] = {
        PyLong_FromUnsignedLong(trace->domain),
        PyLong_FromSize_t(trace->size),
        convert_traceback(conv, trace->traceback),
        PyLong_FromUnsignedLong(trace->traceback->total_nframe),
    };
    for (int i = 0; i < 4; i++) {
        if (items[i] == NULL) {
            for (int j = 0; j < 4; j++) {
                Py_XDECREF(items[j]);
            }
            Py_DECREF(tuple);
            return NULL;
        }
    }
    for (int i = 0; i < 4; i++) {
        PyTuple_SET_ITEM(tuple, i, items[i]);
    }
    /* Ints and frames cannot make a cycle: keep a million of these tuples
       out of the garbage collector's way. */
    PyObject_GC_UnTrack(tuple);
    return tuple;
}

/* The tuple of a trace, shared with the traces of the same domain, size
   and traceback converted just before. */
static PyObject *
convert_trace(converter_t *conv, const snapshot_trace_t *trace)
{
    uint64_t hash = ((uint64_t)trace->traceback->index << 32 ^ trace->size
                     ^ (uint64_t)trace->domain << 48)
                    * UINT64_C(0x9E3779B97F4A7C15);
    trace_entry_t *entry = &conv->traces[hash >> 52];
    Py_BUILD_ASSERT(TRACE_CACHE == 1 << 12);
    if (entry->traceback == trace->traceback && entry->size == trace->size
        && entry->domain == trace->domain)
    {
        return Py_NewRef(entry->tuple);
    }
    PyObject *tuple = trace_to_pyobject(conv, trace);
    if (tuple == NULL) {
        return NULL;
    }
    Py_XSETREF(entry->tuple, Py_NewRef(tuple));
    entry->traceback = trace->traceback;
    entry->size = trace->size;
    entry->domain = trace->domain;
    return tuple;
}

/* Convert the traces of a snapshot into a list of (domain, size,
   traceback, total_nframe) tuples. */
static PyObject *
snapshot_to_list(snapshot_t *snapshot)
{
    converter_t *conv = PyMem_RawCalloc(1, sizeof(converter_t));
    if (conv == NULL) {
        return PyErr_NoMemory();
    }
    conv->tracebacks = PyMem_RawCalloc(snapshot->ntracebacks,
                                       sizeof(PyObject *));
    PyObject *list = PyList_New((Py_ssize_t)snapshot->count);
    if (conv->tracebacks == NULL || list == NULL) {
        if (list == NULL) {
            PyErr_NoMemory();
        }
        Py_CLEAR(list);
        goto done;
    }
    /* Until it is full, the list is referenced from here only: out of the
       garbage collector's sight, it is not traversed by every collection
       that the million allocations below trigger. */
    PyObject_GC_UnTrack(list);
    for (size_t i = 0; i < snapshot->count; i++) {
        PyObject *tuple = convert_trace(conv, &snapshot->traces[i]);
        if (tuple == NULL) {
            Py_CLEAR(list);  /* items not set yet are NULL */
            break;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, tuple);
    }
    if (list != NULL) {
        PyObject_GC_Track(list);
    }

done:
    if (conv->tracebacks != NULL) {
        for (uint32_t i = 0; i < snapshot->ntracebacks; i++) {
            Py_XDECREF(conv->tracebacks[i]);
        }
        PyMem_RawFree(conv->tracebacks);
    }
    for (int i = 0; i < TRACE_CACHE; i++) {
        Py_XDECREF(conv->traces[i].tuple);
    }
    PyMem_RawFree(conv);
    return list;
}


/* Take a reference to the interned tables of the calling interpreter, so
   the tracebacks stay valid after its mutex is released; NULL if it does
   not trace.  Called with the state's mutex held. */
static interned_t *
interned_acquire(tm_state_t *state)
{
    if (!state->tracing) {
        return NULL;
    }
    state->interned->refcnt++;
    return state->interned;
}

static void
interned_put(tm_state_t *state, interned_t *interned)
{
    if (interned == NULL) {
        return;
    }
    lock_state(state);
    interned_t *dead = interned_release(interned);
    unlock_state(state);
    interned_destroy(dead);
}


typedef struct {
    snapshot_t *snapshot;
    interned_t *interned;
} snapshot_add_t;

static void
snapshot_add_trace(void *arg, unsigned int domain, size_t size,
                   uint32_t traceback)
{
    snapshot_add_t *args = arg;
    snapshot_t *snapshot = args->snapshot;
    assert(snapshot->count < snapshot->capacity);
    snapshot_trace_t *trace = &snapshot->traces[snapshot->count++];
    trace->traceback = args->interned->by_index[traceback];
    trace->size = size;
    trace->domain = domain;
}

static int
count_domain(_Py_hashtable_t *domains, const void *key, const void *value,
             void *user_data)
{
    *(size_t *)user_data += ((const traces_t *)value)->count;
    return 0;
}

/* Copy the traces of the state, so that allocations go on being traced (by
   other threads too) while they are converted to Python objects.  Called
   with the state's mutex held; return -1 on memory error. */
static int
snapshot_copy(snapshot_t *snapshot, tm_state_t *state, interned_t *interned)
{
    traces_t *traces[NSTRIPES];
    state_traces(state, traces);
    size_t count = tables_count(traces, state->domains);
    snapshot->count = 0;
    snapshot->capacity = count;
    snapshot->traces = raw_malloc(Py_MAX(count, 1)
                                  * sizeof(snapshot_trace_t));
    if (snapshot->traces == NULL) {
        return -1;
    }
    snapshot->ntracebacks = interned->nindex;
    snapshot_add_t args = {snapshot, interned};
    tables_visit(traces, state->domains, snapshot_add_trace, &args);
    assert(snapshot->count == count);
    return 0;
}


PyObject *
_PyTraceMalloc_GetTraces(void)
{
    tm_state_t *state = interp_state(_PyInterpreterState_GET());
    snapshot_t snapshot = {NULL, 0, 0, 0};

    lock_state(state);
    interned_t *interned = interned_acquire(state);
    int err = interned ? snapshot_copy(&snapshot, state, interned) : 0;
    unlock_state(state);

    PyObject *list;
    if (err < 0) {
        list = PyErr_NoMemory();
    }
    else {
        /* The snapshot's own objects are not traced. */
        int was_reentrant = reentrant;
        reentrant = 1;
        list = snapshot_to_list(&snapshot);
        reentrant = was_reentrant;
    }
    if (snapshot.traces != NULL) {
        raw_free(snapshot.traces);
    }
    interned_put(state, interned);
    return list;
}


PyObject*
_PyTraceMalloc_GetTraceback(unsigned int domain, uintptr_t ptr)
{
    tm_state_t *state = interp_state(_PyInterpreterState_GET());
    traceback_t *traceback = NULL;

    lock_state(state);
    interned_t *interned = interned_acquire(state);
    if (interned != NULL) {
        traceback = find_traceback(state, domain, ptr);
    }
    unlock_state(state);

    PyObject *result;
    if (traceback == NULL) {
        result = Py_NewRef(Py_None);
    }
    else {
        result = traceback_to_pyobject(traceback);
    }
    interned_put(state, interned);
    return result;
}


PyObject *
_PyTraceMalloc_GetObjectTraceback(PyObject *obj)
{
    PyTypeObject *type = Py_TYPE(obj);
    const size_t presize = _PyType_PreHeaderSize(type);
    uintptr_t ptr = (uintptr_t)((char *)obj - presize);
    return _PyTraceMalloc_GetTraceback(DEFAULT_DOMAIN, ptr);
}


/* --- Fatal error reports ------------------------------------------------- */

#define PUTS(fd, str) (void)_Py_write_noraise(fd, str, (int)strlen(str))

static void
_PyMem_DumpFrame(int fd, frame_t * frame)
{
    PUTS(fd, "  File \"");
    _Py_DumpASCII(fd, frame->filename);
    PUTS(fd, "\", line ");
    _Py_DumpDecimal(fd, frame->lineno);
    PUTS(fd, "\n");
}

/* Find the traceback of a block in the tracing interpreters, the calling
   one first.  Runs on a fatal error path, where a lock may be held by the
   thread that crashed, so it only tries the locks. */
static traceback_t *
find_traceback_for_dump(const void *ptr)
{
    traceback_t *traceback = NULL;
    if (!PyMutex_LockFast(&runtime_state.mutex._bits)) {
        return NULL;
    }
    tm_state_t *own = caller_state();
    for (Py_ssize_t i = -1; i < runtime_state.ntracing && !traceback; i++) {
        tm_state_t *state = (i < 0) ? own : runtime_state.tracing[i];
        if (state == NULL || (i >= 0 && state == own)
            || !try_lock_state(state))
        {
            continue;
        }
        if (state->tracing) {
            traceback = find_traceback(state, DEFAULT_DOMAIN,
                                       (uintptr_t)ptr);
        }
        unlock_state(state);
    }
    unlock_registry();
    return traceback;
}

/* The traceback of a trace the hooks dropped, if its tables are still
   those of its state.  As above, only tries the locks. */
static traceback_t *
dropped_traceback_for_dump(const dropped_t *dropped)
{
    traceback_t *traceback = NULL;
    if (!PyMutex_LockFast(&runtime_state.mutex._bits)) {
        return NULL;
    }
    tm_state_t *state = dropped->state;
    if (is_registered(state) && try_lock_state(state)) {
        if (state->generation == dropped->generation) {
            traceback = dropped->interned->by_index[dropped->traceback];
        }
        unlock_state(state);
    }
    unlock_registry();
    return traceback;
}

/* Dump the traceback where a memory block was allocated into file descriptor
   fd. */
void
_PyMem_DumpTraceback(int fd, const void *ptr)
{
    if (ntracing_hint() == 0) {
        PUTS(fd, "Enable tracemalloc to get the memory block "
                 "allocation traceback\n\n");
        return;
    }
    traceback_t *traceback;
    if (ptr == untraced_block && untraced_trace != NULL
        && untraced_trace->state != NULL)
    {
        /* The block this thread is freeing: the hooks dropped its trace
           already. */
        traceback = dropped_traceback_for_dump(untraced_trace);
    }
    else {
        traceback = find_traceback_for_dump(ptr);
    }
    if (traceback == NULL) {
        return;
    }
    PUTS(fd, "Memory block allocated at (most recent call first):\n");
    for (int i=0; i < traceback->nframe; i++) {
        _PyMem_DumpFrame(fd, &traceback->frames[i]);
    }
    PUTS(fd, "\n");
}

#undef PUTS


/* --- The calling interpreter's figures ----------------------------------- */

int
_PyTraceMalloc_IsTracing(void)
{
    return state_is_tracing(interp_state(_PyInterpreterState_GET()));
}


void
_PyTraceMalloc_ClearTraces(void)
{
    tm_state_t *state = interp_state(_PyInterpreterState_GET());
    if (!state_is_tracing(state)) {
        return;
    }
    tables_t tables;
    if (tables_new(&tables, 0) < 0) {
        /* keep the traces rather than lose the ability to trace */
        return;
    }
    lock_state(state);
    int swapped = state->tracing;
    if (swapped) {
        tables_swap(state, &tables, 0);
        reset_traced(state);
    }
    unlock_state(state);
    if (swapped) {
        tables_destroy(&tables);
    }
    else {
        tables_discard(&tables);
    }
}


int
_PyTraceMalloc_GetTracebackLimit(void)
{
    tm_state_t *state = interp_state(_PyInterpreterState_GET());
    lock_state(state);
    int max_nframe = state->max_nframe;
    unlock_state(state);
    return max_nframe ? max_nframe : DEFAULT_NFRAME;
}


static int
add_domain_size(_Py_hashtable_t *domains, const void *key, const void *value,
                void *user_data)
{
    *(size_t *)user_data += traces_memory((traces_t *)value);
    return 0;
}

/* The memory tracemalloc uses for a state.  Called with its mutex held. */
static size_t
state_memory(tm_state_t *state)
{
    size_t size = 0;
    if (state->tracing) {
        interned_t *interned = state->interned;
        size = interned->tracebacks_capacity * sizeof(uint32_t);
        size += _Py_hashtable_size(interned->filenames);
        size += interned->index_capacity * sizeof(traceback_t *);
        for (int i = 0; i < NSTRIPES; i++) {
            stripe_t *stripe = state_stripe(state, i);
            if (stripe->traces != NULL) {
                size += traces_memory(stripe->traces);
            }
            if (stripe->cache != NULL) {
                size += capture_cache_size(stripe->cache);
            }
        }
        size += _Py_hashtable_size(state->domains);
        _Py_hashtable_foreach(state->domains, add_domain_size, &size);
    }
    return size;
}


PyObject *
_PyTraceMalloc_GetTracedMemory(void)
{
    tm_state_t *state = interp_state(_PyInterpreterState_GET());
    lock_state(state);
    Py_ssize_t size = traced_now(state);
    Py_ssize_t peak_size = state->peak_traced_memory;
    unlock_state(state);
    return Py_BuildValue("nn", size, peak_size);
}


void
_PyTraceMalloc_ResetPeak(void)
{
    tm_state_t *state = interp_state(_PyInterpreterState_GET());
    lock_state(state);
    state->peak_traced_memory = traced_now(state);
    unlock_state(state);
}


/* --- Leftovers and every interpreter's figures --------------------------- */

/* Called with the registry locked. */
static size_t
leftovers_memory(const leftovers_t *left)
{
    size_t size = sizeof(leftovers_t);
    if (left->domains != NULL) {
        for (int i = 0; i < NSTRIPES; i++) {
            if (left->traces[i] != NULL) {
                size += traces_memory(left->traces[i]);
            }
        }
        size += _Py_hashtable_size(left->domains);
        _Py_hashtable_foreach(left->domains, add_domain_size, &size);
    }
    if (left->tracebacks != NULL) {
        size += left->tracebacks->memory;
    }
    return size;
}

static size_t
all_leftovers_memory(void)
{
    size_t size = 0;
    lock_registry();
    for (leftovers_t *left = runtime_state.leftovers; left != NULL;
         left = left->next)
    {
        size += leftovers_memory(left);
    }
    unlock_registry();
    return size;
}

size_t
_PyTraceMalloc_GetMemory(void)
{
    PyInterpreterState *interp = _PyInterpreterState_GET();
    tm_state_t *state = interp_state(interp);
    lock_state(state);
    size_t size = state_memory(state);
    unlock_state(state);
    if (_Py_IsMainInterpreter(interp)) {
        /* The leftovers belong to the process, which the main interpreter
           stands for. */
        size += all_leftovers_memory();
    }
    return size;
}


/* The traces of a set copied under the registry lock, to be converted to
   Python objects without it. */
typedef struct {
    size_t size;
    uint32_t traceback;
    unsigned int domain;
} leftover_trace_t;

typedef struct {
    int64_t interp_id;
    int max_nframe;
    leftover_tracebacks_t *tracebacks;      /* a reference */
    leftover_trace_t *traces;
    size_t count;
} leftovers_copy_t;

static void
copy_leftover_trace(void *arg, unsigned int domain, size_t size,
                    uint32_t traceback)
{
    leftovers_copy_t *copy = arg;
    copy->traces[copy->count++] = (leftover_trace_t){size, traceback, domain};
}

/* Copy the sets with traces left; return their number, or -1 on memory
   error. */
static Py_ssize_t
leftovers_copy_all(leftovers_copy_t **copies_p)
{
    lock_registry();
    Py_ssize_t n = 0;
    for (leftovers_t *left = runtime_state.leftovers; left != NULL;
         left = left->next)
    {
        n += (left->count != 0);
    }
    leftovers_copy_t *copies = allocators.raw.calloc(
        allocators.raw.ctx, Py_MAX(n, 1), sizeof(leftovers_copy_t));
    Py_ssize_t i = 0;
    for (leftovers_t *left = runtime_state.leftovers;
         left != NULL && copies != NULL; left = left->next)
    {
        if (left->count == 0) {
            continue;
        }
        leftovers_copy_t *copy = &copies[i++];
        copy->interp_id = left->interp_id;
        copy->max_nframe = left->max_nframe;
        copy->traces = raw_malloc(left->count * sizeof(leftover_trace_t));
        if (copy->traces == NULL) {
            n = -1;
            break;
        }
        copy->tracebacks = left->tracebacks;
        copy->tracebacks->refcnt++;
        leftovers_visit(left, copy_leftover_trace, copy);
        assert(copy->count == left->count);
    }
    unlock_registry();
    *copies_p = copies;
    return (copies == NULL) ? -1 : n;
}

static void
leftovers_copies_free(leftovers_copy_t *copies, Py_ssize_t n)
{
    if (copies == NULL) {
        return;
    }
    lock_registry();
    for (Py_ssize_t i = 0; i < n; i++) {
        if (copies[i].tracebacks != NULL) {
            leftover_tracebacks_release(copies[i].tracebacks);
        }
    }
    unlock_registry();
    for (Py_ssize_t i = 0; i < n; i++) {
        raw_free(copies[i].traces);
    }
    raw_free(copies);
}

/* The objects shared by the traces of a converted set: a tuple of frames
   per traceback, and a str per filename. */
typedef struct {
    PyObject **tracebacks;      /* by traceback index */
    _Py_hashtable_t *filenames; /* UTF-8 filename => str */
} leftovers_converter_t;

static PyObject *
leftover_filename_to_pyobject(leftovers_converter_t *conv,
                              const char *filename)
{
    PyObject *str = _Py_hashtable_get(conv->filenames, filename);
    if (str == NULL) {
        str = PyUnicode_DecodeUTF8(filename, (Py_ssize_t)strlen(filename),
                                   "surrogatepass");
        if (str == NULL) {
            return NULL;
        }
        if (_Py_hashtable_set(conv->filenames, filename, str) < 0) {
            Py_DECREF(str);
            return PyErr_NoMemory();
        }
    }
    return Py_NewRef(str);
}

static PyObject *
leftover_traceback_to_pyobject(leftovers_converter_t *conv,
                               const leftover_traceback_t *traceback)
{
    PyObject *frames = PyTuple_New(traceback->nframe);
    if (frames == NULL) {
        return NULL;
    }
    for (int i = 0; i < traceback->nframe; i++) {
        const leftover_frame_t *frame = &traceback->frames[i];
        PyObject *filename = leftover_filename_to_pyobject(conv,
                                                           frame->filename);
        PyObject *item = filename ? Py_BuildValue("(NI)", filename,
                                                  frame->lineno) : NULL;
        if (item == NULL) {
            Py_DECREF(frames);
            return NULL;
        }
        PyTuple_SET_ITEM(frames, i, item);
    }
    return frames;
}

static PyObject *
leftover_trace_to_pyobject(leftovers_converter_t *conv,
                           const leftovers_copy_t *copy,
                           const leftover_trace_t *trace)
{
    PyObject **cached = &conv->tracebacks[trace->traceback];
    const leftover_traceback_t *traceback =
        copy->tracebacks->by_index[trace->traceback];
    if (*cached == NULL) {
        *cached = leftover_traceback_to_pyobject(conv, traceback);
        if (*cached == NULL) {
            return NULL;
        }
    }
    return Py_BuildValue("(InOH)", trace->domain, (Py_ssize_t)trace->size,
                         *cached, traceback->total_nframe);
}

/* (traceback_limit, traces) of a copied set, the traces as in
   _PyTraceMalloc_GetTraces(). */
static PyObject *
leftovers_copy_to_pyobject(const leftovers_copy_t *copy)
{
    leftovers_converter_t conv = {NULL, NULL};
    PyObject *result = NULL;
    PyObject *list = PyList_New((Py_ssize_t)copy->count);
    conv.tracebacks = PyMem_RawCalloc(copy->tracebacks->nindex,
                                      sizeof(PyObject *));
    conv.filenames = hashtable_new(_Py_hashtable_hash_ptr,
                                   _Py_hashtable_compare_direct,
                                   NULL, tracemalloc_clear_filename);
    if (list == NULL || conv.tracebacks == NULL || conv.filenames == NULL) {
        if (list != NULL) {
            PyErr_NoMemory();
        }
        goto done;
    }
    for (size_t i = 0; i < copy->count; i++) {
        PyObject *item = leftover_trace_to_pyobject(&conv, copy,
                                                    &copy->traces[i]);
        if (item == NULL) {
            goto done;
        }
        PyList_SET_ITEM(list, (Py_ssize_t)i, item);
    }
    result = Py_BuildValue("(iO)", copy->max_nframe, list);

done:
    Py_XDECREF(list);
    if (conv.tracebacks != NULL) {
        for (uint32_t i = 0; i < copy->tracebacks->nindex; i++) {
            Py_XDECREF(conv.tracebacks[i]);
        }
        PyMem_RawFree(conv.tracebacks);
    }
    if (conv.filenames != NULL) {
        _Py_hashtable_destroy(conv.filenames);
    }
    return result;
}

PyObject *
_PyTraceMalloc_GetLeftovers(void)
{
    leftovers_copy_t *copies;
    Py_ssize_t n = leftovers_copy_all(&copies);
    if (n < 0) {
        leftovers_copies_free(copies, copies ? 1 : 0);
        return PyErr_NoMemory();
    }
    /* The objects made here are not traced, as for a snapshot. */
    int was_reentrant = reentrant;
    reentrant = 1;
    PyObject *dict = PyDict_New();
    for (Py_ssize_t i = 0; i < n && dict != NULL; i++) {
        PyObject *key = PyLong_FromLongLong(copies[i].interp_id);
        PyObject *value = key ? leftovers_copy_to_pyobject(&copies[i]) : NULL;
        if (value == NULL || PyDict_SetItem(dict, key, value) < 0) {
            Py_CLEAR(dict);
        }
        Py_XDECREF(key);
        Py_XDECREF(value);
    }
    reentrant = was_reentrant;
    leftovers_copies_free(copies, n);
    return dict;
}


/* One interpreter's figures for _PyTraceMalloc_GetInterpreters(). */
typedef struct {
    int64_t id;
    int max_nframe;
    size_t traced;
    size_t peak;
    size_t count;
    size_t memory;
    int ended;
} interp_row_t;

static PyInterpreterState *
state_interp(tm_state_t *state)
{
    return (PyInterpreterState *)((char *)state
                                  - offsetof(PyInterpreterState, tracemalloc));
}

/* Called with the registry and the state locked. */
static interp_row_t
state_row(tm_state_t *state)
{
    traces_t *traces[NSTRIPES];
    state_traces(state, traces);
    size_t count = tables_count(traces, state->domains);
    size_t traced = traced_now(state);
    return (interp_row_t){
        .id = state_interp(state)->id,
        .max_nframe = state->max_nframe,
        .traced = traced,
        .peak = state->peak_traced_memory,
        .count = count,
        .memory = state_memory(state),
        .ended = 0,
    };
}

/* Called with the registry locked. */
static interp_row_t
leftovers_row(leftovers_t *left)
{
    return (interp_row_t){
        .id = left->interp_id,
        .max_nframe = left->max_nframe,
        .traced = left->size,
        .peak = left->ended_size,
        .count = left->count,
        .memory = leftovers_memory(left),
        .ended = 1,
    };
}

/* The rows of every tracing interpreter, then of every set of leftovers,
   made at once under the registry lock: an interpreter being created or
   deleted is in the registry with all its tables, or not at all.  Return
   their number, or -1 on memory error. */
static Py_ssize_t
interp_rows(interp_row_t **rows_p)
{
    lock_registry();
    Py_ssize_t n = runtime_state.ntracing;
    for (leftovers_t *left = runtime_state.leftovers; left != NULL;
         left = left->next)
    {
        n += (left->count != 0);
    }
    interp_row_t *rows = raw_malloc(Py_MAX(n, 1) * sizeof(interp_row_t));
    if (rows != NULL) {
        Py_ssize_t i = 0;
        for (; i < runtime_state.ntracing; i++) {
            tm_state_t *state = runtime_state.tracing[i];
            lock_state(state);
            rows[i] = state_row(state);
            unlock_state(state);
        }
        for (leftovers_t *left = runtime_state.leftovers; left != NULL;
             left = left->next)
        {
            if (left->count != 0) {
                rows[i++] = leftovers_row(left);
            }
        }
        assert(i == n);
    }
    unlock_registry();
    *rows_p = rows;
    return rows ? n : -1;
}

PyObject *
_PyTraceMalloc_GetInterpreters(void)
{
    interp_row_t *rows;
    Py_ssize_t n = interp_rows(&rows);
    if (n < 0) {
        return PyErr_NoMemory();
    }
    PyObject *list = PyList_New(n);
    for (Py_ssize_t i = 0; i < n && list != NULL; i++) {
        interp_row_t *row = &rows[i];
        PyObject *item = Py_BuildValue(
            "(LinnnnO)", (long long)row->id, row->max_nframe,
            (Py_ssize_t)row->traced, (Py_ssize_t)row->peak,
            (Py_ssize_t)row->count, (Py_ssize_t)row->memory,
            row->ended ? Py_True : Py_False);
        if (item == NULL) {
            Py_CLEAR(list);
            break;
        }
        PyList_SET_ITEM(list, i, item);
    }
    raw_free(rows);
    return list;
}


/* --- The leftovers report ------------------------------------------------ */

/* Text in memory of the raw allocator; NULL data after a memory error. */
typedef struct {
    char *data;
    size_t len;
    size_t capacity;
} text_t;

static void
text_add(text_t *text, const char *format, ...)
{
    if (text->data == NULL) {
        return;
    }
    for (;;) {
        va_list args;
        va_start(args, format);
        int n = vsnprintf(text->data + text->len,
                          text->capacity - text->len, format, args);
        va_end(args);
        if (n < 0) {
            return;
        }
        if ((size_t)n < text->capacity - text->len) {
            text->len += (size_t)n;
            return;
        }
        size_t capacity = text->capacity * 2 + (size_t)n;
        char *data = allocators.raw.realloc(allocators.raw.ctx, text->data,
                                            capacity);
        if (data == NULL) {
            raw_free(text->data);
            text->data = NULL;
            return;
        }
        text->data = data;
        text->capacity = capacity;
    }
}

/* Size and number of the traces of a set, by traceback index. */
typedef struct {
    size_t size;
    size_t count;
} traceback_total_t;

static void
add_to_traceback_total(void *arg, unsigned int domain, size_t size,
                       uint32_t traceback)
{
    traceback_total_t *totals = arg;
    totals[traceback].size += size;
    totals[traceback].count++;
}

/* Write the summary of a set and its top largest tracebacks.  Called with
   the registry locked. */
static void
leftovers_report(text_t *text, leftovers_t *left, int top)
{
    text_add(text, "tracemalloc: interpreter %lld ended leaving %zu traced "
             "blocks, %zu bytes\n", (long long)left->interp_id,
             left->count, left->size);
    leftover_tracebacks_t *tracebacks = left->tracebacks;
    traceback_total_t *totals = allocators.raw.calloc(
        allocators.raw.ctx, tracebacks->nindex, sizeof(traceback_total_t));
    if (totals == NULL) {
        return;
    }
    leftovers_visit(left, add_to_traceback_total, totals);
    for (int rank = 1; rank <= top; rank++) {
        uint32_t best = 0;
        for (uint32_t i = 1; i < tracebacks->nindex; i++) {
            if (totals[i].size > totals[best].size) {
                best = i;
            }
        }
        if (totals[best].count == 0) {
            break;
        }
        text_add(text, "#%d: %zu bytes in %zu blocks, allocated at "
                 "(most recent call first):\n", rank, totals[best].size,
                 totals[best].count);
        leftover_traceback_t *traceback = tracebacks->by_index[best];
        for (int i = 0; i < traceback->nframe; i++) {
            text_add(text, "  File \"%s\", line %u\n",
                     traceback->frames[i].filename,
                     traceback->frames[i].lineno);
        }
        totals[best] = (traceback_total_t){0, 0};
    }
    raw_free(totals);
}

void
_PyTraceMalloc_ReportLeftovers(int64_t interp_id, int top)
{
    text_t text = {raw_malloc(4096), 0, 4096};
    if (text.data == NULL) {
        return;
    }
    lock_registry();
    leftovers_t *found = NULL;
    for (leftovers_t *left = runtime_state.leftovers; left != NULL;
         left = left->next)
    {
        if (left->interp_id == interp_id && left->count != 0) {
            found = left;
        }
    }
    if (found != NULL) {
        leftovers_report(&text, found, top);
    }
    unlock_registry();
    for (size_t done = 0; text.data != NULL && done < text.len; ) {
        Py_ssize_t n = _Py_write_noraise(fileno(stderr), text.data + done,
                                         text.len - done);
        if (n <= 0) {
            break;
        }
        done += (size_t)n;
    }
    raw_free(text.data);
}
