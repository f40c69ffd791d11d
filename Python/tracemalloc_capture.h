/* Capturing tracebacks for tracemalloc: the interned tracebacks and
   filenames of a session, the walk of a thread's frames, and the capture
   cache in front of both.

   Included by Python/tracemalloc.c only (as Python/thread.c includes
   thread_pthread.h), so that the allocation hook inlines traceback_new().
   It uses the raw_*() allocators and hash table helpers of tracemalloc.c.
   Capturing runs with the lock of the stripe whose capture cache it uses
   held, and interning with the state's shared tables locked too (see
   pycore_tracemalloc.h); with take_refs == 0, the
   thread state is not attached, and no reference count may change.  A
   session's cache and interned tables are made and destroyed with no
   lock held, before they are shared or once nothing can reach them, but
   for the caches of stripes other than the first, made with the stripe's
   lock held when a thread first allocates there.

   Capturing a traceback walks the frames, decodes a line number for each
   one and interns the result.  Decoding (PyCode_Addr2Line()) and interning
   dominate, and allocations mostly come from a few places, so the capture
   cache keeps the interned traceback of each recent key (the (code object,
   instruction) of its frames and its total number of frames), and line
   numbers per (code object, instruction) for the tracebacks it misses.
   Both are keyed by code object addresses, and are valid only while
   state->code_epoch is the value they were filled with: code_dealloc()
   bumps it whenever a code object dies, before its address can be
   reused.

   A session starts with small caches and buffers, whatever its traceback
   limit: each grows with what is captured (a cache when it has missed
   more often than it has entries, the buffers when a traceback is deeper
   than they are), so that an interpreter of a pool that allocates little
   pays little. */

#define MIN_LINE_CACHE_SIZE 256     /* powers of two */
#define MAX_LINE_CACHE_SIZE 4096
/* The traceback cache grows from 16 up to 4096 tracebacks (powers of
   two), with at most this many frame keys outside its entries, */
#define TRACEBACK_CACHE_KEYS 8192
#define MIN_TRACEBACK_CACHE_ENTRIES 16
#define MAX_TRACEBACK_CACHE_ENTRIES 4096
/* and only tracebacks of at most this many frames. */
#define MAX_CACHED_NFRAME 64
/* The capture buffers start with room for this many frames. */
#define MIN_CAPTURE_FRAMES 16
/* Slots of the set of interned tracebacks, at first (a power of two) */
#define MIN_INTERNED_CAPACITY 64
/* Frames whose count is known, kept per capture cache (see "Counting the
   frames" below), and frames a walk notes on its way down (powers of two;
   MAX_PASSED <= MAX_ANCHORS / 2). */
#define MAX_ANCHORS 64
#define MAX_PASSED 32
/* Captures kept by frame and instruction (a power of two; see "Reusing
   a capture"), the generations of the mark they may date from (a power
   of two), */
#define NMEMOS 256
#define MEMO_GENERATIONS 8
/* memos refused before store_memo() resets the mark, */
#define MEMO_RESET_AFTER 64
/* at 1 frame, the misses of a trial of the memos, the hits below which
   (during the trial: 3 hits for 5 misses, a hit rate of 3 in 8) the
   memos are left alone for the next MEMO_REST captures (see
   capture_resting()), */
#define MEMO_TRIAL 256
#define MEMO_MIN_HITS (MEMO_TRIAL * 3 / 5)
#define MEMO_REST 8192
/* the frames a capture climbs down looking for a memo before it walks
   the stack instead (at most: a climb costs about what a walk does over
   three frames of the traceback, see capture_cache_new()), */
#define MAX_CLIMB 8
/* and the tracebacks kept by parent and frame key (powers of two; the
   table grows with its misses, up to 1 MB).  A miss builds and interns a
   traceback, a hit in a larger table costs a cache miss more at worst:
   email's parser at 25 frames missed 8.2% of 22.6M lookups at 8192
   entries, 1.2% at 32768, and ran 7% faster. */
#define MIN_CHILD_CACHE_SIZE 256
#define MAX_CHILD_CACHE_SIZE 32768

/* The key of a frame.  lasti is as wide as a pointer, so that comparing
   two keys is comparing two pairs of words. */
typedef struct {
    PyCodeObject *code;
    intptr_t lasti;
} frame_key_t;

/* A frame's line number and interned filename, by (code object,
   instruction).  The filename is valid while the interned tables are:
   forget_cached_tracebacks() empties the entries when they are
   replaced. */
typedef struct {
    PyCodeObject *code;         /* NULL if the entry is empty */
    int lasti;
    unsigned int lineno;
    uint64_t epoch;
    PyObject *filename;
} line_entry_t;

/* An interned traceback and its key: the key of its first frame, the
   others in tb_keys.  Two entries fill a cache line, a set of the cache,
   and at 1 frame a lookup reads that line only.  The code epoch's high
   half is the cache's era. */
typedef struct {
    traceback_t *traceback;     /* NULL if the entry is empty */
    PyCodeObject *code;
    int lasti;
    uint32_t epoch;             /* the code epoch's low half */
    uint16_t nframe;
    uint16_t total;
    uint32_t hash;              /* the low half of the key's */
} traceback_entry_t;

#define TRACEBACK_SET_SIZE (2 * sizeof(traceback_entry_t))
static_assert(TRACEBACK_SET_SIZE == 64, "two tracebacks are a cache line");

/* A frame of a thread and the number of complete frames from it down,
   itself included; or, noted by a walk, the number above it. */
typedef struct {
    _PyInterpreterFrame *frame;
    int count;
} anchor_t;

/* The traceback of the stack from frame down, frame at instr_ptr */
typedef struct {
    _PyInterpreterFrame *frame;     /* NULL if the entry is empty */
    _Py_CODEUNIT *instr_ptr;
    traceback_t *traceback;
    uintptr_t generation;           /* the cache's memo_generation then */
} memo_t;

/* The interned traceback of a frame of (code, lasti) on top of the
   frames of parent (NULL: of no frame).  A set of two entries fills a
   cache line: a climb's lookups mostly miss the CPU's caches, and with
   a 64-bit epoch and lasti every set lay across two lines.  The code
   epoch's high half is the cache's era. */
typedef struct {
    traceback_t *parent;
    PyCodeObject *code;         /* NULL if the entry is empty */
    int lasti;
    uint32_t epoch;             /* the code epoch's low half */
    traceback_t *traceback;
} child_entry_t;

#define CHILD_SET_SIZE (2 * sizeof(child_entry_t))
static_assert(CHILD_SET_SIZE == 64, "a set of children is a cache line");

struct tracemalloc_capture_cache {
    /* Direct mapped by code object and instruction */
    line_entry_t *lines;
    size_t nlines;              /* a power of two */
    size_t line_misses;         /* since lines was made */
    /* Two-way set associative by the hash of the key, the sets aligned on
       TRACEBACK_SET_SIZE in tracebacks_mem */
    traceback_entry_t *tracebacks;
    void *tracebacks_mem;
    size_t ntracebacks;         /* a power of two */
    size_t max_ntracebacks;     /* what ntracebacks may grow to */
    size_t traceback_misses;    /* since tracebacks was made */
    int set_shift;              /* 64 - log2(ntracebacks / 2) */
    /* The session's traceback limit, the frames an entry keeps, and the
       frames a capture climbs down looking for a memo */
    int max_nframe;
    int entry_nframe;
    int max_climb;
    /* HASH_BASE to the power max_nframe - 1: see child_hash() */
    Py_uhash_t bottom_power;
    /* entry_nframe - 1 frame keys per entry of tracebacks: all but the
       first */
    frame_key_t *tb_keys;
    /* Where the key of the traceback being captured goes, and the frames
       of its traceback: room for capacity frames each, at most
       max_nframe. */
    int capacity;
    frame_key_t *keys;
    traceback_t *traceback;
    /* The frames of anchors_of whose count is known, the deepest first,
       valid while the thread state names this cache as the owner of its
       frames (tracemalloc_frames_owner) */
    PyThreadState *anchors_of;
    int nanchors;
    anchor_t anchors[MAX_ANCHORS];
    /* The frames the capture in progress noted: one in every stride of
       the npassed it passed, the highest first */
    int npassed;
    int stride;
    int nnoted;
    anchor_t noted[MAX_PASSED];
    /* Tracebacks of the stacks of anchors_of, by frame and instruction,
       valid under the same rule as the anchors, and only those of the
       last MEMO_GENERATIONS generations whose frame is below the floor of
       their generation: direct mapped */
    uintptr_t memo_generation;
    unsigned int memos_refused;     /* as the frame was above the mark */
    /* At 1 frame: misses left in the trial of the memos, and the hits
       so far (counted at every limit, judged at 1 frame only); or, while
       the memos rest, the captures left until the next trial */
    unsigned int memo_trial;
    unsigned int memo_hits;
    unsigned int memo_rest;
    uintptr_t memo_floor[MEMO_GENERATIONS];
    memo_t memos[NMEMOS];
    /* Two-way set associative by parent and frame key (child_set()),
       the sets aligned on CHILD_SET_SIZE in children_mem */
    child_entry_t *children;
    void *children_mem;
    size_t nchildren;           /* a power of two */
    size_t child_misses;        /* since children was made */
    /* The code epoch's high half, of the tracebacks and children */
    uint32_t era;
};

typedef struct tracemalloc_capture_cache capture_cache_t;

/* --- Interned tracebacks and filenames ----------------------------------- */

static interned_t *
interned_new(void)
{
    interned_t *interned = raw_malloc(sizeof(interned_t));
    if (interned == NULL) {
        return NULL;
    }
    interned->refcnt = 1;
    interned->nindex = 1;
    interned->index_capacity = 64;
    interned->by_index = raw_malloc(64 * sizeof(traceback_t *));
    if (interned->by_index != NULL) {
        interned->by_index[0] = &runtime_state.empty_traceback;
    }
    interned->filenames = hashtable_new(hashtable_hash_pyobject,
                                        hashtable_compare_unicode,
                                        tracemalloc_clear_filename, NULL);
    interned->tracebacks_capacity = MIN_INTERNED_CAPACITY;
    interned->tracebacks = raw_calloc(MIN_INTERNED_CAPACITY,
                                      sizeof(uint32_t));
    if (interned->filenames == NULL || interned->tracebacks == NULL
        || interned->by_index == NULL)
    {
        if (interned->filenames != NULL) {
            _Py_hashtable_destroy(interned->filenames);
        }
        raw_free(interned->tracebacks);
        raw_free(interned->by_index);
        raw_free(interned);
        return NULL;
    }
    return interned;
}

/* Drop a reference; return the tables to destroy (outside the lock, with
   the interpreter's thread state attached) or NULL.  Called with the
   interpreter's mutex held. */
static interned_t *
interned_release(interned_t *interned)
{
    assert(interned->refcnt > 0);
    if (--interned->refcnt == 0) {
        return interned;
    }
    return NULL;
}

/* Destroy tables that nobody references: releases the filenames, so the
   thread state of their interpreter must be attached and no tracemalloc
   lock held. */
static void
interned_destroy(interned_t *interned)
{
    if (interned == NULL) {
        return;
    }
    /* by_index[0] is the empty traceback, which is static */
    for (uint32_t i = 1; i < interned->nindex; i++) {
        raw_free(interned->by_index[i]);
    }
    raw_free(interned->tracebacks);
    _Py_hashtable_destroy(interned->filenames);
    raw_free(interned->by_index);
    raw_free(interned);
}

/* Give an interned traceback its index. */
static int
interned_add_index(interned_t *interned, traceback_t *traceback)
{
    if (interned->nindex == interned->index_capacity) {
        if (interned->index_capacity > UINT32_MAX / 2) {
            return -1;
        }
        uint32_t capacity = interned->index_capacity * 2;
        traceback_t **by_index = allocators.raw.realloc(
            allocators.raw.ctx, interned->by_index,
            capacity * sizeof(traceback_t *));
        if (by_index == NULL) {
            return -1;
        }
        interned->by_index = by_index;
        interned->index_capacity = capacity;
    }
    traceback->index = interned->nindex;
    interned->by_index[interned->nindex++] = traceback;
    return 0;
}


/* --- Capturing a traceback ----------------------------------------------- */

/* Intern the filename of a frame.  With take_refs == 0 (the thread state is
   not attached, so reference counts may not be touched), only filenames
   that are already interned can be used. */
static PyObject *
intern_filename(interned_t *interned, PyObject *filename, int take_refs)
{
    if (filename == NULL || !PyUnicode_Check(filename)) {
        return &_Py_STR(anon_unknown);
    }
    _Py_hashtable_entry_t *entry;
    entry = _Py_hashtable_get_entry(interned->filenames, filename);
    if (entry != NULL) {
        return (PyObject *)entry->key;
    }
    if (!take_refs) {
        return &_Py_STR(anon_unknown);
    }
    /* the filenames table keeps a reference to the filename */
    if (_Py_hashtable_set(interned->filenames, Py_NewRef(filename),
                          NULL) < 0) {
        Py_DECREF(filename);
        return &_Py_STR(anon_unknown);
    }
    return filename;
}


/* A traceback's hash is a polynomial in the hashes of its frames, the
   frame on top the constant term, with the number of frames it had in
   all mixed in last (reversibly): the hash of a frame on top of an
   interned traceback, its parent, then follows from the parent's in a few
   operations (child_hash()), where a walk over every frame cost as much as
   the rest of building a child. */
#define HASH_BASE ((Py_uhash_t)UINT64_C(0xC2B2AE3D27D4EB4F))
#define HASH_FRAME ((Py_uhash_t)UINT64_C(0x9E3779B97F4A7C15))
#define HASH_TOTAL ((Py_uhash_t)UINT64_C(0x165667B19E3779F9))

static inline Py_uhash_t
frame_hash(const frame_t *frame)
{
    /* Interned filenames are equal only if they are the same object
       (traceback_equal() compares them so) */
    return ((Py_uhash_t)(uintptr_t)frame->filename * HASH_FRAME
            + frame->lineno);
}

static inline Py_uhash_t
total_hash(int total)
{
    return (Py_uhash_t)total * HASH_TOTAL;
}

static Py_uhash_t
traceback_hash(const traceback_t *traceback)
{
    Py_uhash_t h = 0;
    for (int i = traceback->nframe - 1; i >= 0; i--) {
        h = h * HASH_BASE + frame_hash(&traceback->frames[i]);
    }
    return h ^ total_hash(traceback->total_nframe);
}

/* HASH_BASE to the power n */
static Py_uhash_t
hash_base_power(int n)
{
    Py_uhash_t power = 1;
    Py_uhash_t base = HASH_BASE;
    for (; n > 0; n >>= 1) {
        if (n & 1) {
            power *= base;
        }
        base *= base;
    }
    return power;
}

/* The hash of the traceback of nframe frames, total in all, whose frame on
   top is top and the others the first of parent (NULL if none): parent's
   frames all, or all but the one at the bottom if it has nframe. */
static inline Py_uhash_t
child_hash(capture_cache_t *cache, const traceback_t *parent,
           const frame_t *top, int nframe, int total)
{
    Py_uhash_t h = 0;
    if (parent != NULL) {
        h = parent->hash ^ total_hash(parent->total_nframe);
        if (parent->nframe == nframe) {
            assert(nframe == cache->max_nframe);
            h -= (frame_hash(&parent->frames[nframe - 1])
                  * cache->bottom_power);
        }
    }
    return (h * HASH_BASE + frame_hash(top)) ^ total_hash(total);
}


/* A cache's table of *n entries of size bytes grown, once it has missed
   more often than it has entries: a table factor times larger, empty,
   and its misses reset; or table itself if memory is short (it is only a
   cache). */
static void *
grown_table(void *table, size_t *n, size_t *misses, size_t factor,
            size_t size)
{
    void *grown = allocators.raw.calloc(allocators.raw.ctx, *n * factor,
                                        size);
    if (grown == NULL) {
        return table;
    }
    raw_free(table);
    *n *= factor;
    *misses = 0;
    return grown;
}

/* Fill a frame of key: its line number and interned filename, from the
   cache when it has them. */
static void
cached_frame(capture_cache_t *cache, interned_t *interned, frame_key_t key,
             uint64_t epoch, frame_t *frame)
{
    uintptr_t h = ((uintptr_t)key.code >> 4) ^ ((uintptr_t)key.lasti * 31);
    line_entry_t *entry = &cache->lines[h & (cache->nlines - 1)];
    if (entry->code == key.code && entry->lasti == key.lasti
        && entry->epoch == epoch)
    {
        frame->lineno = entry->lineno;
        frame->filename = entry->filename;
        return;
    }
    if (++cache->line_misses > cache->nlines
        && cache->nlines < MAX_LINE_CACHE_SIZE)
    {
        cache->lines = grown_table(cache->lines, &cache->nlines,
                                   &cache->line_misses, 4,
                                   sizeof(line_entry_t));
        entry = &cache->lines[h & (cache->nlines - 1)];
    }
    int lineno = PyCode_Addr2Line(key.code,
                                  (int)key.lasti * (int)sizeof(_Py_CODEUNIT));
    frame->lineno = lineno < 0 ? 0 : (unsigned int)lineno;
    frame->filename = intern_filename(interned, key.code->co_filename, 1);
    entry->code = key.code;
    entry->lasti = (int)key.lasti;
    entry->lineno = frame->lineno;
    entry->epoch = epoch;
    entry->filename = frame->filename;
}


/* Make room for twice as many frames in the capture buffers, at most
   max_nframe. */
static TM_SLOW_PATH int
grow_capture_buffers(capture_cache_t *cache)
{
    int capacity = (int)Py_MIN(2 * (size_t)cache->capacity,
                               (size_t)cache->max_nframe);
    assert(capacity > cache->capacity);
    frame_key_t *keys = allocators.raw.realloc(allocators.raw.ctx, cache->keys,
                                  capacity * sizeof(frame_key_t));
    if (keys == NULL) {
        return -1;
    }
    cache->keys = keys;
    traceback_t *traceback = allocators.raw.realloc(
        allocators.raw.ctx, cache->traceback, TRACEBACK_SIZE(capacity));
    if (traceback == NULL) {
        return -1;
    }
    cache->traceback = traceback;
    cache->capacity = capacity;
    return 0;
}

/* The shim frame that CALL_ALLOC_AND_ENTER_INIT pushes under the frame of
   an __init__ method: never complete. */
extern const struct _PyCode_DEF(8) _Py_InitCleanup;

/* Is a frame below the first complete one of its thread complete?

   Telling whether a frame is complete, as _PyFrame_GetFirstComplete()
   does, reads its code object; a capture does it for every frame of the
   thread, to count them all (total_nframe), and in a deep stack that cost
   more than the rest of the capture.  Below the first complete frame,
   though, a frame can only be incomplete if it is an entry frame of the C
   stack or an __init__ shim: no Python code runs on top of a frame that
   has not reached its RESUME.  So the frame alone tells.  The debug build
   checks it against _PyFrame_GetFirstComplete() on every capture. */
static inline int
complete_below_top(_PyInterpreterFrame *pyframe)
{
    return (pyframe->owner != FRAME_OWNED_BY_CSTACK
            && pyframe->f_executable != (PyObject *)&_Py_InitCleanup);
}

/* _PyFrame_GetFirstComplete() below the first complete frame. */
static inline _PyInterpreterFrame *
next_complete(_PyInterpreterFrame *pyframe)
{
#ifndef NDEBUG
    _PyInterpreterFrame *expected = _PyFrame_GetFirstComplete(pyframe);
#endif
    while (pyframe != NULL && !complete_below_top(pyframe)) {
        pyframe = pyframe->previous;
    }
    assert(pyframe == expected);
    return pyframe;
}

/* --- Counting the frames ----------------------------------------------

   Walking all the frames of the thread to count them cost `email`, 30
   frames deep, 40% of its tracing time at 1 frame.  So a capture cache
   keeps anchors: frames of the thread whose count (of complete frames,
   from the frame down, itself included) a capture found.  The frames
   below a frame cannot change while it is on the stack: only generator
   frames are relinked, and they are never anchors.  So the count of an
   anchor holds until its frame is popped, and a capture walks down to
   the highest anchor still there, or to the bottom.

   _PyThreadState_PopFrame() tells which are still there: every frame an
   anchor can be is on the thread's data stack, and the thread state keeps
   the lowest address popped since the cache last looked
   (tracemalloc_pop_mark; 0 once a chunk of the stack was freed).  An
   anchor below the mark was not popped.  The test is sound whatever the
   order of the stack's chunks in memory, since popping a frame at an
   address puts the mark at or below it; it is only exact within a chunk.
   The thread state also names the cache whose anchors the mark is kept
   for (tracemalloc_frames_owner), as a thread may capture with several:
   one per interpreter, one per stripe in the free-threaded build.  Only
   the thread that runs the thread state reads or writes both.

   Only the frames below those a traceback keeps are counted so: the
   others are read anyway.  The walk notes the frames it passes above the
   anchor it stops at, the new ones, at most MAX_PASSED of them evenly
   spread, and they become anchors once the capture knows the total.  At
   1 frame, the anchor is mostly the caller of the frame that allocates,
   which a loop of calls that allocate does not pop, or that frame itself,
   when it allocates after a function it called did: both are looked at
   before walking.

   The debug build checks the count against a walk of every frame on
   every capture. */

/* What live_anchor() returns when there is none: no frame is NULL. */
static const anchor_t no_anchor = {NULL, 0};

/* live_anchor() when the highest anchor was popped. */
static Py_NO_INLINE const anchor_t *
drop_popped_anchors(capture_cache_t *cache, uintptr_t mark)
{
    int n = cache->nanchors;
    while (n > 0 && (uintptr_t)cache->anchors[n - 1].frame >= mark) {
        n--;
    }
    cache->nanchors = n;
    return n > 0 ? &cache->anchors[n - 1] : &no_anchor;
}

/* Does tstate keep its mark for cache, and are the anchors and memos of
   cache those of tstate?  If not, the mark tells nothing about them. */
static inline int
keeps_mark_for(PyThreadState *tstate, capture_cache_t *cache)
{
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)tstate;
    return (cache->anchors_of == tstate
            && impl->tracemalloc_frames_owner == (void *)cache);
}

/* The highest anchor of tstate still on its stack, or no_anchor; forget
   the others. */
static inline Py_ALWAYS_INLINE const anchor_t *
live_anchor(capture_cache_t *cache, PyThreadState *tstate)
{
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)tstate;
    int n = cache->nanchors;
    if (n == 0) {
        return &no_anchor;
    }
    if (!keeps_mark_for(tstate, cache)) {
        cache->nanchors = 0;
        return &no_anchor;
    }
    uintptr_t mark = impl->tracemalloc_pop_mark;
    const anchor_t *top = &cache->anchors[n - 1];
    if ((uintptr_t)top->frame < mark) {
        return top;
    }
    return drop_popped_anchors(cache, mark);
}

/* Keep every other entry of entries[0:n], from entries[first]; return
   how many are left. */
static int
thin_anchors(anchor_t *entries, int n, int first)
{
    int kept = 0;
    for (int i = first; i < n; i += 2) {
        entries[kept++] = entries[i];
    }
    return kept;
}

/* Note a complete frame passed by the walk, above which there are
   `above` complete frames. */
static inline void
note_frame(capture_cache_t *cache, _PyInterpreterFrame *pyframe, int above)
{
    /* Only frames of the data stack are popped through
       _PyThreadState_PopFrame(); the __init__ shim is not counted. */
    if (pyframe->owner != FRAME_OWNED_BY_THREAD
        || pyframe->f_executable == (PyObject *)&_Py_InitCleanup
        || (cache->npassed++ & (cache->stride - 1)) != 0)
    {
        return;
    }
    if (cache->nnoted == MAX_PASSED) {
        /* the highest frame noted stays */
        cache->nnoted = thin_anchors(cache->noted, MAX_PASSED, 0);
        cache->stride *= 2;
        if (((cache->npassed - 1) & (cache->stride - 1)) != 0) {
            return;
        }
    }
    cache->noted[cache->nnoted++] = (anchor_t){pyframe, above};
}

/* Start a new generation of memos, the frames of the others valid below
   floor at most. */
static void
next_memo_generation(capture_cache_t *cache, uintptr_t floor)
{
    for (int i = 0; i < MEMO_GENERATIONS; i++) {
        cache->memo_floor[i] = Py_MIN(cache->memo_floor[i], floor);
    }
    cache->memo_generation++;
    cache->memo_floor[cache->memo_generation % MEMO_GENERATIONS] =
        UINTPTR_MAX;
}

/* Have the thread state keep its mark for cache from now on: forget the
   anchors whose frame the mark says was popped (all of them if it was
   kept for another cache, or the cache for another thread), keep the
   mark as the floor of the memos made so far, and reset it. */
static Py_NO_INLINE void
reset_mark(capture_cache_t *cache, PyThreadState *tstate)
{
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)tstate;
    uintptr_t mark = keeps_mark_for(tstate, cache)
                     ? impl->tracemalloc_pop_mark : 0;
    (void)drop_popped_anchors(cache, mark);
    next_memo_generation(cache, mark);
    cache->anchors_of = tstate;
    impl->tracemalloc_frames_owner = cache;
    impl->tracemalloc_pop_mark = UINTPTR_MAX;
}

/* Make anchors of the frames noted, now that the total is known, and
   have the thread state keep the mark for them.  Not needed when none
   was noted: the anchors kept are below the mark. */
static TM_SLOW_PATH void
settle_anchors(capture_cache_t *cache, PyThreadState *tstate, int total)
{
    reset_mark(cache, tstate);
    int n = cache->nanchors;
    int m = cache->nnoted;
    if (total >= UINT16_MAX) {
        m = 0;      /* the counts beyond the limit are unknown */
    }
    while (n + m > MAX_ANCHORS) {
        /* the highest of the old anchors stays, the deeper ones thin out */
        n = thin_anchors(cache->anchors, n, (n - 1) % 2);
    }
    for (int i = m - 1; i >= 0; i--) {
        cache->anchors[n++] = (anchor_t){cache->noted[i].frame,
                                         total - cache->noted[i].count};
    }
    cache->nanchors = n;
    cache->nnoted = 0;
    cache->npassed = 0;
    cache->stride = 1;
}

/* The number of frames from pyframe (complete, or NULL) down, below the
   first complete frame of its thread, added to count, up to UINT16_MAX;
   the walk stops at anchor, a live anchor below pyframe (or no_anchor),
   and forgets the anchors if it does not meet it. */
static Py_NO_INLINE int
count_frames(capture_cache_t *cache, _PyInterpreterFrame *pyframe, int count,
             const anchor_t *anchor)
{
    _PyInterpreterFrame *stop = anchor->frame;
    for (; pyframe != NULL && count < UINT16_MAX;
         pyframe = pyframe->previous)
    {
        if (pyframe == stop) {
            return Py_MIN(count + anchor->count, UINT16_MAX);
        }
        if (complete_below_top(pyframe)) {
            note_frame(cache, pyframe, count);
            count++;
        }
    }
    /* The anchor was not met: the limit was reached, or the thread
       state's stack was switched for another (greenlets do that).  The
       count is right; the anchors would be out of order. */
    cache->nanchors = 0;
    return count;
}

#ifndef NDEBUG
/* The number of complete frames from top down, up to UINT16_MAX, by the
   book */
static int
count_all_frames(_PyInterpreterFrame *top)
{
    int count = 0;
    for (_PyInterpreterFrame *f = top;
         f != NULL && count < UINT16_MAX;
         f = _PyFrame_GetFirstComplete(f->previous))
    {
        count++;
    }
    return count;
}
#endif

/* Store the key of pyframe as keys[i], and return the hash h of the keys
   before it with this one's. */
static inline uint64_t
add_key(frame_key_t *keys, int i, _PyInterpreterFrame *pyframe, uint64_t h)
{
    PyCodeObject *code = _PyFrame_GetCode(pyframe);
    int lasti = _PyInterpreterFrame_LASTI(pyframe);
    keys[i].code = code;
    keys[i].lasti = lasti;
    return ((h + (uintptr_t)code + ((uint64_t)(unsigned int)lasti << 40))
            * UINT64_C(0x9E3779B97F4A7C15));
}

/* Read the frames of tstate from top, a complete frame (or NULL), down:
   store the keys of the first max_nframe (the cache's) in cache->keys,
   and return the number stored, or -1 on memory error; *total gets the
   number of frames, up to UINT16_MAX, and *hash the hash of the whole
   key. */
static inline Py_ALWAYS_INLINE int
capture_keys(PyThreadState *tstate, capture_cache_t *cache, int max_nframe,
             _PyInterpreterFrame *top, int *total, uint64_t *hash)
{
    assert(max_nframe == cache->max_nframe);
    int nframe = 0;
    uint64_t h = 0;
    _PyInterpreterFrame *pyframe = top;
    if (max_nframe == 1) {
        /* The default limit, the frame on top alone: no loop */
        if (pyframe != NULL) {
            h = add_key(cache->keys, 0, pyframe, h);
            nframe = 1;
            pyframe = next_complete(pyframe->previous);
        }
    }
    else {
        for (;;) {
            int limit = Py_MIN(max_nframe, cache->capacity);
            for (; pyframe != NULL && nframe < limit;
                 pyframe = next_complete(pyframe->previous))
            {
                h = add_key(cache->keys, nframe, pyframe, h);
                nframe++;
            }
            if (pyframe == NULL || nframe == max_nframe) {
                break;
            }
            /* a traceback deeper than the buffers */
            if (grow_capture_buffers(cache) < 0) {
                return -1;
            }
        }
    }
    int count = nframe;
    if (pyframe != NULL) {
        const anchor_t *anchor = live_anchor(cache, tstate);
        if (pyframe == anchor->frame) {
            /* the most common case: the first frame below is the anchor */
            count = Py_MIN(nframe + anchor->count, UINT16_MAX);
        }
        else if (top == anchor->frame) {
            /* the next most common: the frame that allocates called
               another one that did */
            count = anchor->count;
        }
        else {
            count = count_frames(cache, pyframe, nframe, anchor);
            if (cache->nnoted > 0) {
                settle_anchors(cache, tstate, count);
            }
        }
    }
    assert(count == count_all_frames(top));
    *total = count;
    *hash = (h + (uint64_t)count) * UINT64_C(0x9E3779B97F4A7C15);
    return nframe;
}

/* --- Reusing a capture ----------------------------------------------

   While a frame is on the stack, the frames below it stay as they are,
   each at the instruction that called the one above: only the frame on
   top runs.  So the traceback of the stack from a frame down is a
   function of that frame and its instruction, for as long as the frame
   is not popped; and it is the frame's own key on top of the traceback
   of its caller at the call.  The cache keeps the tracebacks it made by
   frame and instruction, the memos, and by the traceback below and the
   key on top, the children.  A capture whose frame on top has no memo
   climbs down to the first frame that has one, at most max_climb frames
   (or captures the stack from there as below), and back up making the
   traceback of each frame the child of the one below it, and its memo:
   a few lookups per frame climbed, whatever the traceback limit, and
   most allocations come from a loop in one frame, or from a function it
   calls again and again.  With a limit of a few frames, capturing from
   the top is as cheap, and a capture does (max_climb is 0).

   The cache tells whether the frame of a memo is still the same one by
   the thread state's mark, as for the anchors (see "Counting the
   frames"): below the mark, it was not popped since the mark was reset.
   Resetting the mark starts a generation of memos, and the mark is then
   the floor of those before: their frames at or above it may have been
   popped since they were made.  The memos of the last MEMO_GENERATIONS
   generations are kept so.  A memo is made only for a frame of the
   thread's data stack (not a generator's, which runs on top of different
   frames each time it resumes) that is below the mark.

   Memos and children are interned tracebacks, which stay until
   forget_cached_tracebacks(); a code object cannot die while a frame
   runs it, and children are kept by code epoch, as the rest of the
   cache.  The debug build captures anyway and checks that the result is
   the same traceback. */

static inline memo_t *
memo_slot(capture_cache_t *cache, _PyInterpreterFrame *frame,
          _Py_CODEUNIT *instr_ptr)
{
    /* The instructions of a frame, two bytes or more apart, take
       consecutive slots. */
    uintptr_t h = ((uintptr_t)instr_ptr >> 1) ^ ((uintptr_t)frame >> 4);
    return &cache->memos[h & (NMEMOS - 1)];
}

/* Is a memo of an earlier generation still valid, its frame below the
   marks of the resets since? */
static inline int
memo_survived(capture_cache_t *cache, memo_t *memo)
{
    uintptr_t generation = memo->generation;
    return (cache->memo_generation - generation < MEMO_GENERATIONS
            && (uintptr_t)memo->frame
               < cache->memo_floor[generation % MEMO_GENERATIONS]);
}

/* The memo of frame, a frame of tstate, at its instruction, or NULL. */
static inline Py_ALWAYS_INLINE traceback_t *
find_memo(capture_cache_t *cache, PyThreadState *tstate,
          _PyInterpreterFrame *frame)
{
    _Py_CODEUNIT *instr_ptr = frame->instr_ptr;
    memo_t *memo = memo_slot(cache, frame, instr_ptr);
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)tstate;
    if (memo->frame != frame || memo->instr_ptr != instr_ptr
        || (uintptr_t)frame >= impl->tracemalloc_pop_mark
        || !keeps_mark_for(tstate, cache)
        || (memo->generation != cache->memo_generation
            && !memo_survived(cache, memo)))
    {
        return NULL;
    }
    assert(frame->owner == FRAME_OWNED_BY_THREAD);
    return memo->traceback;
}

/* Keep traceback, just made, as the memo of frame, a frame of tstate, at
   its instruction, if that frame can have one. */
static inline Py_ALWAYS_INLINE void
store_memo(capture_cache_t *cache, PyThreadState *tstate,
           _PyInterpreterFrame *frame, traceback_t *traceback)
{
    if (frame->owner != FRAME_OWNED_BY_THREAD) {
        return;
    }
    _PyThreadStateImpl *impl = (_PyThreadStateImpl *)tstate;
    if (!keeps_mark_for(tstate, cache)) {
        reset_mark(cache, tstate);
    }
    else if ((uintptr_t)frame >= impl->tracemalloc_pop_mark) {
        /* Popped, maybe more than once, since the mark was reset: the
           memo could not be told from one of an earlier frame there.
           Only walks that add anchors reset the mark otherwise, and with
           a stack no deeper than the traceback limit there are none:
           reset it now and then, or the frames of a loop would never get
           memos once the mark went below them. */
        if (++cache->memos_refused % MEMO_RESET_AFTER != 0) {
            return;
        }
        reset_mark(cache, tstate);
    }
    *memo_slot(cache, frame, frame->instr_ptr) = (memo_t){
        frame, frame->instr_ptr, traceback, cache->memo_generation};
}

/* The first of the two entries where the traceback of a key of hash may
   be, the newer of the two (see cache_traceback()).  A set of two misses
   far less often than a slot of one, at the same size: at 1 frame, a run
   of `email` built 57,800 tracebacks with the cache direct mapped, and
   19,500 with sets of two; `asyncio` 5,900 and 370.  A miss builds and
   interns a traceback, reading tables that have gone cold. */
static traceback_entry_t *
traceback_set(capture_cache_t *cache, uint64_t hash)
{
    /* the high bits of the hash depend on every bit of the key */
    return &cache->tracebacks[2 * (hash >> cache->set_shift)];
}

/* The keys of the frames of entry but the first */
static frame_key_t *
entry_keys(capture_cache_t *cache, traceback_entry_t *entry)
{
    return (cache->tb_keys
            + (entry - cache->tracebacks) * (cache->entry_nframe - 1));
}

/* Is entry that of a key of nframe frames, total and hash, cached in
   epoch?  Its frames are compared next. */
static inline Py_ALWAYS_INLINE int
entry_may_match(const traceback_entry_t *entry, int nframe, int total,
                uint64_t hash, uint64_t epoch)
{
    return (entry->traceback != NULL && entry->hash == (uint32_t)hash
            && entry->epoch == (uint32_t)epoch && entry->nframe == nframe
            && entry->total == total);
}

/* The interned traceback of the key in cache->keys, or NULL. */
static inline Py_ALWAYS_INLINE traceback_t *
cached_traceback(capture_cache_t *cache, int nframe, int total,
                 uint64_t hash, uint64_t epoch)
{
    traceback_entry_t *entry = traceback_set(cache, hash);
    if (!entry_may_match(entry, nframe, total, hash, epoch)
        && !entry_may_match(++entry, nframe, total, hash, epoch))
    {
        return NULL;
    }
    /* Only the first entry whose header matches is compared: should both
       match but for the frames, a miss puts the key in the first. */
    assert(nframe <= cache->entry_nframe);
    /* Without a branch per frame: the keys mostly match */
    const frame_key_t *keys = cache->keys;
    uintptr_t diff = (((uintptr_t)keys[0].code ^ (uintptr_t)entry->code)
                      | (uintptr_t)(keys[0].lasti ^ entry->lasti));
    if (nframe > 1) {
        const frame_key_t *others = entry_keys(cache, entry);
        for (int i = 1; i < nframe; i++) {
            diff |= (((uintptr_t)keys[i].code ^ (uintptr_t)others[i - 1].code)
                     | (uintptr_t)(keys[i].lasti ^ others[i - 1].lasti));
        }
    }
    return diff == 0 ? entry->traceback : NULL;
}

/* An empty table of n entries of size bytes, two to a cache line, the
   pairs aligned on cache lines; *mem is what to free.  NULL on memory
   error. */
static void *
calloc_pairs(size_t n, size_t size, void **mem)
{
    assert(2 * size == 64);
    /* One pair more than n entries take, to align them */
    *mem = allocators.raw.calloc(allocators.raw.ctx, n + 2, size);
    if (*mem == NULL) {
        return NULL;
    }
    return _Py_ALIGN_UP(*mem, 2 * size);
}

/* Give cache an empty traceback cache of n entries, and free the one it
   had; return -1 on memory error, and leave cache as it was. */
static int
new_traceback_cache(capture_cache_t *cache, size_t n)
{
    void *mem;
    traceback_entry_t *tracebacks = calloc_pairs(
        n, sizeof(traceback_entry_t), &mem);
    /* One key more than the entries keep, as there is none at 1 frame */
    frame_key_t *tb_keys = raw_malloc(
        (n * (size_t)(cache->entry_nframe - 1) + 1) * sizeof(frame_key_t));
    if (tracebacks == NULL || tb_keys == NULL) {
        raw_free(mem);
        raw_free(tb_keys);
        return -1;
    }
    raw_free(cache->tracebacks_mem);
    raw_free(cache->tb_keys);
    cache->tracebacks = tracebacks;
    cache->tracebacks_mem = mem;
    cache->tb_keys = tb_keys;
    cache->ntracebacks = n;
    assert(n >= 4 && (n & (n - 1)) == 0);
    cache->set_shift = 64;
    for (size_t i = n / 2; i > 1; i /= 2) {
        cache->set_shift--;
    }
    cache->traceback_misses = 0;
    return 0;
}

/* Make the traceback cache twice larger, and empty, once it has missed
   more often than it has entries. */
static void
grow_traceback_cache(capture_cache_t *cache)
{
    /* it is only a cache: on memory error, it stays as it is */
    (void)new_traceback_cache(cache, cache->ntracebacks * 2);
}

static void
cache_traceback(capture_cache_t *cache, traceback_t *traceback, int nframe,
                int total, uint64_t hash, uint64_t epoch)
{
    if (nframe > cache->entry_nframe) {
        return;  /* too deep to keep */
    }
    if (++cache->traceback_misses > cache->ntracebacks
        && cache->ntracebacks < cache->max_ntracebacks)
    {
        grow_traceback_cache(cache);
    }
    /* The new traceback goes first, the first one second, the second
       is forgotten: the older of a set is replaced.  The keys beyond the
       first frame are copied only if there are any (none at 1 frame, nor
       in an empty entry, whose nframe is 0). */
    traceback_entry_t *entry = traceback_set(cache, hash);
    if (entry[0].nframe > 1) {
        memcpy(entry_keys(cache, &entry[1]), entry_keys(cache, &entry[0]),
               (size_t)(entry[0].nframe - 1) * sizeof(frame_key_t));
    }
    entry[1] = entry[0];
    if (nframe > 1) {
        memcpy(entry_keys(cache, entry), cache->keys + 1,
               (size_t)(nframe - 1) * sizeof(frame_key_t));
    }
    *entry = (traceback_entry_t){
        traceback, cache->keys[0].code, (int)cache->keys[0].lasti,
        (uint32_t)epoch, (uint16_t)nframe, (uint16_t)total, (uint32_t)hash};
}

/* Empty the tracebacks and children of cache, made in another era of the
   code epoch than epoch's: their epochs are its low half only. */
static TM_SLOW_PATH void
start_era(capture_cache_t *cache, uint64_t epoch)
{
    memset(cache->tracebacks, 0,
           cache->ntracebacks * sizeof(traceback_entry_t));
    if (cache->children != NULL) {
        memset(cache->children, 0,
               cache->nchildren * sizeof(child_entry_t));
    }
    cache->era = (uint32_t)(epoch >> 32);
}

static inline void
check_era(capture_cache_t *cache, uint64_t epoch)
{
    if ((uint32_t)(epoch >> 32) != cache->era) {
        start_era(cache, epoch);
    }
}

/* Forget the cached tracebacks: they were interned in tables being
   replaced. */
static void
forget_cached_tracebacks(capture_cache_t *cache)
{
    memset(cache->tracebacks, 0,
           cache->ntracebacks * sizeof(traceback_entry_t));
    memset(cache->lines, 0, cache->nlines * sizeof(line_entry_t));
    if (cache->children != NULL) {
        memset(cache->children, 0,
               cache->nchildren * sizeof(child_entry_t));
    }
    next_memo_generation(cache, 0);
}


/* The first slot to probe for a traceback hash in the set of a capacity. */
static inline uint32_t
interned_set_home(Py_uhash_t hash, uint32_t capacity)
{
    return (uint32_t)(((uint64_t)hash * UINT64_C(0x9E3779B97F4A7C15)) >> 32)
           & (capacity - 1);
}

/* Put an index in a set that has room and does not hold it. */
static void
interned_set_put(uint32_t *slots, uint32_t capacity, traceback_t **by_index,
                 uint32_t index)
{
    uint32_t i = interned_set_home(by_index[index]->hash, capacity);
    while (slots[i] != 0) {
        i = (i + 1) & (capacity - 1);
    }
    slots[i] = index;
}

/* Make room in the set of interned tracebacks for one more. */
static int
interned_set_reserve(interned_t *interned)
{
    /* nindex - 1 tracebacks are in the set, nindex with the new one */
    uint64_t capacity = interned->tracebacks_capacity;
    if ((uint64_t)interned->nindex * 4 <= capacity * 3) {
        return 0;
    }
    capacity *= 2;
    if (capacity > UINT32_MAX) {
        return -1;
    }
    uint32_t *slots = raw_calloc((size_t)capacity, sizeof(uint32_t));
    if (slots == NULL) {
        return -1;
    }
    for (uint32_t i = 1; i < interned->nindex; i++) {
        interned_set_put(slots, (uint32_t)capacity, interned->by_index, i);
    }
    raw_free(interned->tracebacks);
    interned->tracebacks = slots;
    interned->tracebacks_capacity = (uint32_t)capacity;
    return 0;
}

/* The interned traceback equal to traceback, whose hash is set, interned
   now if there was none (a copy: traceback is the capture buffer), or NULL
   on memory error. */
static traceback_t *
intern_traceback(interned_t *interned, traceback_t *traceback)
{
    assert(traceback->hash == traceback_hash(traceback));
    uint32_t capacity = interned->tracebacks_capacity;
    uint32_t i = interned_set_home(traceback->hash, capacity);
    for (uint32_t index; (index = interned->tracebacks[i]) != 0;
         i = (i + 1) & (capacity - 1))
    {
        traceback_t *interned_traceback = interned->by_index[index];
        if (interned_traceback->hash == traceback->hash
            && traceback_equal(interned_traceback, traceback))
        {
            return interned_traceback;
        }
    }
    if (interned_set_reserve(interned) < 0) {
        return NULL;
    }
    size_t traceback_size = TRACEBACK_SIZE(traceback->nframe);
    traceback_t *copy = raw_malloc(traceback_size);
    if (copy == NULL) {
        return NULL;
    }
    memcpy(copy, traceback, traceback_size);
    if (interned_add_index(interned, copy) < 0) {
        raw_free(copy);
        return NULL;
    }
    interned_set_put(interned->tracebacks, interned->tracebacks_capacity,
                     interned->by_index, copy->index);
    return copy;
}


/* Build and intern the traceback whose key traceback_new() captured in
   cache->keys; with use_cache, take line numbers from the cache and cache
   the result.  The interned tables are shared by the stripes. */
static traceback_t *
traceback_build(tm_state_t *state, capture_cache_t *cache, int nframe,
                int total, uint64_t hash, uint64_t epoch, int use_cache)
{
    lock_shared(state);
    traceback_t *traceback = cache->traceback;
    traceback->nframe = (uint16_t)nframe;
    traceback->total_nframe = (uint16_t)total;
    for (int i = 0; i < nframe; i++) {
        frame_key_t key = cache->keys[i];
        frame_t *frame = &traceback->frames[i];
        if (use_cache) {
            cached_frame(cache, state->interned, key, epoch, frame);
            continue;
        }
        frame->lineno = (unsigned int)Py_MAX(0, PyCode_Addr2Line(
            key.code, (int)key.lasti * (int)sizeof(_Py_CODEUNIT)));
        frame->filename = intern_filename(state->interned,
                                          key.code->co_filename, 0);
    }
    traceback->hash = traceback_hash(traceback);
    traceback_t *result = intern_traceback(state->interned, traceback);
    unlock_shared(state);
    if (use_cache && result != NULL) {
        cache_traceback(cache, result, nframe, total, hash, epoch);
    }
    return result;
}


/* Capture the traceback of the stack from top, a complete frame of tstate
   (or NULL), down with cache, whose traceback limit is max_nframe, and
   intern it.  A constant max_nframe of 1 leaves out the code for more. */
static inline Py_ALWAYS_INLINE traceback_t *
capture(tm_state_t *state, capture_cache_t *cache, int max_nframe,
        PyThreadState *tstate, _PyInterpreterFrame *top, int take_refs)
{
    uint64_t epoch = _Py_atomic_load_uint64_relaxed(&state->code_epoch);
    int total;
    uint64_t hash;
    int nframe = capture_keys(tstate, cache, max_nframe, top, &total, &hash);
    if (nframe <= 0) {
        return nframe == 0 ? &runtime_state.empty_traceback : NULL;
    }
    if (take_refs && nframe <= cache->entry_nframe) {
        check_era(cache, epoch);
        traceback_t *cached = cached_traceback(cache, nframe, total,
                                               hash, epoch);
        if (cached != NULL) {
            return cached;
        }
    }
    return traceback_build(state, cache, nframe, total, hash, epoch,
                           take_refs);
}


/* The first of the two entries where the traceback of a frame of key on
   top of parent may be: the cache is two-way set associative. */
static inline child_entry_t *
child_set(capture_cache_t *cache, traceback_t *parent, frame_key_t key)
{
    uint64_t h = ((uint64_t)(uintptr_t)parent
                  ^ ((uint64_t)(uintptr_t)key.code << 8)
                  ^ ((uint64_t)key.lasti << 40))
                 * UINT64_C(0x9E3779B97F4A7C15);
    return &cache->children[(h >> 32) & (cache->nchildren - 2)];
}

static inline int
child_matches(const child_entry_t *entry, traceback_t *parent,
              frame_key_t key, uint64_t epoch)
{
    return (entry->parent == parent && entry->code == key.code
            && entry->lasti == (int)key.lasti
            && entry->epoch == (uint32_t)epoch);
}

/* Double the children of cache, empty, unless memory is short (it is
   only a cache). */
static void
grow_children(capture_cache_t *cache)
{
    void *mem;
    child_entry_t *grown = calloc_pairs(cache->nchildren * 2,
                                        sizeof(child_entry_t), &mem);
    if (grown != NULL) {
        raw_free(cache->children_mem);
        cache->children = grown;
        cache->children_mem = mem;
        cache->nchildren *= 2;
        cache->child_misses = 0;
    }
}

/* Build and intern the traceback of a frame of key on top of parent
   (NULL: of no frame), or return NULL on memory error. */
static Py_NO_INLINE traceback_t *
build_child(tm_state_t *state, capture_cache_t *cache, traceback_t *parent,
            frame_key_t key, uint64_t epoch)
{
    int nframe = 1;
    int total = 1;
    if (parent != NULL) {
        nframe = Py_MIN(parent->nframe + 1, cache->max_nframe);
        total = Py_MIN(parent->total_nframe + 1, UINT16_MAX);
    }
    while (cache->capacity < nframe) {
        if (grow_capture_buffers(cache) < 0) {
            return NULL;
        }
    }
    lock_shared(state);
    traceback_t *traceback = cache->traceback;
    traceback->nframe = (uint16_t)nframe;
    traceback->total_nframe = (uint16_t)total;
    cached_frame(cache, state->interned, key, epoch, &traceback->frames[0]);
    if (nframe > 1) {
        memcpy(&traceback->frames[1], parent->frames,
               (size_t)(nframe - 1) * sizeof(frame_t));
    }
    traceback->hash = child_hash(cache, parent, &traceback->frames[0],
                                 nframe, total);
    traceback_t *result = intern_traceback(state->interned, traceback);
    unlock_shared(state);
    return result;
}

/* The interned traceback of a frame of key on top of parent (NULL: of no
   frame), or NULL on memory error.  The entry found or made is put first
   in its set, and the other one stays as the second: the least recently
   used of the two goes. */
static inline traceback_t *
child_traceback(tm_state_t *state, capture_cache_t *cache,
                traceback_t *parent, frame_key_t key, uint64_t epoch)
{
    child_entry_t *set = child_set(cache, parent, key);
    if (child_matches(&set[0], parent, key, epoch)) {
        return set[0].traceback;
    }
    if (child_matches(&set[1], parent, key, epoch)) {
        child_entry_t found = set[1];
        set[1] = set[0];
        set[0] = found;
        return found.traceback;
    }
    traceback_t *traceback = build_child(state, cache, parent, key, epoch);
    if (traceback == NULL) {
        return NULL;
    }
    if (++cache->child_misses > cache->nchildren
        && cache->nchildren < MAX_CHILD_CACHE_SIZE)
    {
        grow_children(cache);
        set = child_set(cache, parent, key);
    }
    set[1] = set[0];
    set[0] = (child_entry_t){parent, key.code, (int)key.lasti,
                             (uint32_t)epoch, traceback};
    return traceback;
}

/* Capture the traceback of tstate, whose first complete frame is top,
   from the memos: climb down to the first frame that has one (or capture
   the frame max_climb frames down), and make the traceback of each frame
   above it, and its memo, on the way back up (see "Reusing a
   capture"). */
static Py_NO_INLINE traceback_t *
climb_capture(tm_state_t *state, capture_cache_t *cache,
              PyThreadState *tstate, _PyInterpreterFrame *top)
{
    uint64_t epoch = _Py_atomic_load_uint64_relaxed(&state->code_epoch);
    check_era(cache, epoch);
    _PyInterpreterFrame *climbed[MAX_CLIMB];
    _PyInterpreterFrame *frame = top;
    traceback_t *traceback = NULL;
    int n = 0;
    for (;;) {
        if (n == cache->max_climb) {
            traceback = capture(state, cache, cache->max_nframe, tstate,
                                frame, 1);
            if (traceback == NULL) {
                return NULL;
            }
            store_memo(cache, tstate, frame, traceback);
            break;
        }
        climbed[n++] = frame;
        frame = next_complete(frame->previous);
        if (frame == NULL) {
            break;      /* the bottom: the frame above is the first */
        }
        if (frame->owner == FRAME_OWNED_BY_THREAD) {
            traceback = find_memo(cache, tstate, frame);
            if (traceback != NULL) {
                break;
            }
        }
    }
    while (n > 0) {
        frame = climbed[--n];
        frame_key_t key = {_PyFrame_GetCode(frame),
                           _PyInterpreterFrame_LASTI(frame)};
        traceback = child_traceback(state, cache, traceback, key, epoch);
        if (traceback == NULL) {
            return NULL;
        }
        store_memo(cache, tstate, frame, traceback);
    }
    return traceback;
}

/* Capture the traceback of tstate, whose frame on top has no memo. */
static inline Py_ALWAYS_INLINE traceback_t *
capture_without_memo(tm_state_t *state, capture_cache_t *cache,
                     PyThreadState *tstate)
{
    _PyInterpreterFrame *top = _PyThreadState_GetFrame(tstate);
    if (top == NULL) {
        return &runtime_state.empty_traceback;
    }
    if (top != tstate->current_frame) {
        /* The frame on top is incomplete; the first complete one may
           have a memo. */
        traceback_t *memo = find_memo(cache, tstate, top);
        if (memo != NULL) {
            return memo;
        }
    }
    if (cache->max_nframe > 1) {
        return climb_capture(state, cache, tstate, top);
    }
    /* What climb_capture() does at 1 frame (max_climb 0), without the
       call, and without the code for more frames in the hook's way: the
       instruction cache holds less of the program the hook runs in. */
    traceback_t *traceback = capture(state, cache, 1, tstate, top, 1);
    if (traceback != NULL) {
        store_memo(cache, tstate, top, traceback);
    }
    return traceback;
}

/* capture_without_memo() at 1 frame, the memos left alone: they are
   worth less there, where a capture reads one frame.  Without them, a
   capture costs about 35 instructions more than a hit, and 35 fewer
   than a miss, which looks for a memo and stores one: a trial of the
   memos that hits less often than 3 times in 8 (`email` 17%,
   `simulation` 14%; `churn` and `json`, loops allocating in one frame,
   nearly always) leaves them alone for a while. */
static inline Py_ALWAYS_INLINE traceback_t *
capture_resting(tm_state_t *state, capture_cache_t *cache,
                PyThreadState *tstate)
{
    if (--cache->memo_rest == 0) {
        /* judge_memos() left memo_hits at 0, and no hit counts while
           the memos rest */
        cache->memo_trial = MEMO_TRIAL;
    }
    _PyInterpreterFrame *top = _PyThreadState_GetFrame(tstate);
    if (top == NULL) {
        return &runtime_state.empty_traceback;
    }
    return capture(state, cache, 1, tstate, top, 1);
}

/* Note a miss of the memos at 1 frame, and end their trial after
   MEMO_TRIAL. */
static inline void
judge_memos(capture_cache_t *cache)
{
    if (--cache->memo_trial == 0) {
        if (cache->memo_hits < MEMO_MIN_HITS) {
            cache->memo_rest = MEMO_REST;
        }
        else {
            cache->memo_trial = MEMO_TRIAL;
        }
        cache->memo_hits = 0;
    }
}

/* Capture the current traceback of tstate (NULL: none) and intern it.
   With take_refs == 0, tstate is not attached: reference counts may not be
   touched, so only filenames already interned are used, and the cache is
   left alone.  Called with the lock of the stripe held, whose capture
   cache is used. */
static inline Py_ALWAYS_INLINE traceback_t *
traceback_new(tm_state_t *state, stripe_t *stripe, PyThreadState *tstate,
              int take_refs)
{
    if (tstate == NULL || tstate->current_frame == NULL) {
        return &runtime_state.empty_traceback;
    }
    capture_cache_t *cache = stripe->cache;
    if (STRIPE_IS_LAZY && cache == NULL
        && (cache = stripe_cache_new(state, stripe)) == NULL)
    {
        return NULL;
    }
    assert(cache != NULL);
    if (!take_refs) {
        return capture(state, cache, cache->max_nframe, tstate,
                       _PyThreadState_GetFrame(tstate), 0);
    }
    traceback_t *traceback;
    if (cache->memo_rest > 0) {
        traceback = capture_resting(state, cache, tstate);
    }
    else {
        /* The frame on top is mostly complete, and the memo is mostly
           its. */
        traceback = find_memo(cache, tstate, tstate->current_frame);
        if (traceback != NULL) {
            cache->memo_hits++;
        }
        else {
            if (cache->max_nframe == 1) {
                judge_memos(cache);
            }
            traceback = capture_without_memo(state, cache, tstate);
        }
    }
#ifndef NDEBUG
    if (traceback != NULL) {
        traceback_t *captured = capture(state, cache, cache->max_nframe,
                                        tstate,
                                        _PyThreadState_GetFrame(tstate), 1);
        assert(captured == NULL || captured == traceback);
    }
#endif
    return traceback;
}


/* --- The capture cache of a session ------------------------------------- */

static void
capture_cache_destroy(capture_cache_t *cache)
{
    raw_free(cache->lines);
    raw_free(cache->tracebacks_mem);
    raw_free(cache->tb_keys);
    raw_free(cache->keys);
    raw_free(cache->traceback);
    raw_free(cache->children_mem);
    raw_free(cache);
}

/* The memory the capture cache and buffers take now. */
static size_t
capture_cache_size(capture_cache_t *cache)
{
    return (sizeof(capture_cache_t)
            + cache->nlines * sizeof(line_entry_t)
            + (cache->ntracebacks + 2) * sizeof(traceback_entry_t)
            + (cache->ntracebacks * (size_t)(cache->entry_nframe - 1) + 1)
              * sizeof(frame_key_t)
            + (size_t)cache->capacity * sizeof(frame_key_t)
            + TRACEBACK_SIZE(cache->capacity)
            + (cache->children_mem != NULL
               ? (cache->nchildren + 2) * sizeof(child_entry_t) : 0));
}

static capture_cache_t *
capture_cache_new(int max_nframe)
{
    capture_cache_t *cache = allocators.raw.calloc(allocators.raw.ctx, 1,
                                                   sizeof(capture_cache_t));
    if (cache == NULL) {
        return NULL;
    }
    cache->max_nframe = max_nframe;
    cache->bottom_power = hash_base_power(max_nframe - 1);
    cache->entry_nframe = Py_MIN(max_nframe, MAX_CACHED_NFRAME);
    /* Climbing a frame costs a memo lookup, a child lookup and a memo,
       about what capturing three frames of a traceback does: at 1 frame
       (`deepcopy`, `email`) climbing cost up to 23% more instructions
       than capturing from the top, at 25 frames half as many. */
    cache->max_climb = Py_MIN(max_nframe / 3, MAX_CLIMB);
    /* As many tracebacks as TRACEBACK_CACHE_KEYS allow, in the end */
    cache->max_ntracebacks = MAX_TRACEBACK_CACHE_ENTRIES;
    while (cache->max_ntracebacks > MIN_TRACEBACK_CACHE_ENTRIES
           && (cache->max_ntracebacks * (size_t)(cache->entry_nframe - 1)
               > TRACEBACK_CACHE_KEYS))
    {
        cache->max_ntracebacks /= 2;
    }
    cache->nlines = MIN_LINE_CACHE_SIZE;
    cache->capacity = Py_MIN(max_nframe, MIN_CAPTURE_FRAMES);
    cache->stride = 1;
    cache->memo_floor[0] = UINTPTR_MAX;     /* generation 0 is current */
    cache->memo_trial = MEMO_TRIAL;
    if (cache->max_climb > 0) {
        cache->nchildren = MIN_CHILD_CACHE_SIZE;
        cache->children = calloc_pairs(cache->nchildren,
                                       sizeof(child_entry_t),
                                       &cache->children_mem);
    }
    cache->lines = allocators.raw.calloc(allocators.raw.ctx, cache->nlines,
                                         sizeof(line_entry_t));
    cache->keys = raw_malloc(cache->capacity * sizeof(frame_key_t));
    cache->traceback = raw_malloc(TRACEBACK_SIZE(cache->capacity));
    if (cache->lines == NULL
        || new_traceback_cache(cache, MIN_TRACEBACK_CACHE_ENTRIES) < 0
        || cache->keys == NULL
        || cache->traceback == NULL
        || (cache->max_climb > 0 && cache->children == NULL))
    {
        capture_cache_destroy(cache);
        return NULL;
    }
    return cache;
}

