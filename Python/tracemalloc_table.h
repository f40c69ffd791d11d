/* The traces table of tracemalloc: pointer => (size, traceback index).

   Included by Python/tracemalloc.c only (as Python/thread.c includes
   thread_pthread.h), so that the hooks inline its fast paths.  It knows
   nothing of interpreters, locks or tracebacks: its caller serializes
   every call on a table, and gives it raw_malloc(), raw_calloc(),
   raw_free() and hashtable_new() for its memory.  _testinternalcapi tests
   it on its own, through the _PyTraceMalloc_Table*() functions of
   tracemalloc.c.

   It is the structure every traced allocation and every free goes
   through.

   The allocators return blocks aligned on a grain of two pointers, and
   pymalloc carves its pools into consecutive blocks, so the live blocks lie
   close together.  A table keeps the traces of the blocks that start in a
   window of WINDOW_GRAINS grains of address space in a leaf, one 32-bit
   entry per grain: the block's place in the window finds its entry, with
   no key to compare and no probing.  An allocation or a free costs a look
   up of the leaf and one store, and the traces of neighbouring blocks
   share cache lines.  The leaves are found through an open addressing
   table of windows, behind a small direct mapped cache of the windows
   used recently: the blocks of a program come from a few pymalloc pools
   at a time, one per size class.  A leaf that
   empties stays where it is, for the blocks allocated there next, until
   the window table is rebuilt, for want of room or once most leaves are
   empty (a burst of blocks was freed), which drops the empty leaves and
   may shrink the table.

   A pymalloc pool holds blocks of one size, so the first block traced in
   a window tells how close its neighbours will lie.  Blocks of 64 bytes
   or more start SMALL_GRAINS grains apart or further: their window gets
   a small leaf of SMALL_SLOTS entries, one for each run of SMALL_GRAINS
   grains, with the grain it holds.  Two such blocks never share a slot,
   so the leaf stays small, at 40 bytes, 5 to 10 bytes per trace where a
   full leaf would take 128 bytes for four or five traces (importing
   modules, building long-lived structures).  A smaller block gets a full
   leaf, one entry per grain, at 4 to 14 bytes per trace.  A small leaf
   that needs a slot for a second trace (a pool reused for a smaller size,
   a block from another allocator) grows into a full leaf, and the
   rebuilds of large tables make the full leaves whose traces fit small
   again.

   Where traced blocks lie far apart (new blocks in the holes of an older
   heap, survivors of a burst), a leaf holds one or two traces and costs
   30 to 60 bytes a trace with its window slot, against 20 to 25 bytes in
   the spill below: a rebuild of a table of DEMOTE_MIN_WINDOWS leaves or
   more moves the traces of the leaves holding fewer than LEAF_MIN_TRACES
   to the spill.  Not those of three: a window of blocks of 160 bytes or
   more holds no more, at about the spill's cost, and its traces would go
   back and forth as its blocks come and go.  Smaller tables keep their
   sparse leaves: their memory is small, and the traces of a workload
   that allocates and frees in a few windows would go back and forth.
   Tables of fewer than KEEP_EMPTY_WINDOWS leaves keep their empty leaves
   too, for the same reason, but when compacted; larger ones drop them
   when they grow, or once most of their leaves are empty.  A table whose
   leaves hold DENSE_TRACES_PER_LEAF traces or more on average grows
   without reading them.

   An entry packs the size and the traceback index of a trace.  The other
   traces spill into a second table: blocks not aligned on a grain (which
   only the C API can track), blocks larger than LEAF_MAX_SIZE (few per
   window: a leaf would cost more memory than it saves time),
   traceback indexes above ENTRY_MAX_TRACEBACK.  A count of the spilled
   traces by hash of their window tells when a block with no leaf entry
   cannot be in the spill either, which is nearly always: a new block is
   looked for there in case it replaces a spilled trace, and a block freed
   without a leaf entry.  The counts are bytes, so that there are many of
   them: with 1024, as there were, a few thousand large blocks alive made
   nearly every count non-zero.  A count that reaches 255 sticks there.

   The spill is a hash table with open addressing, linear probing and Robin
   Hood insertion, 16-byte slots stored inline (no allocation per trace)
   with the distance of their key from its home slot (which Robin Hood
   compares on every probe), split into shards by the pointer's hash so
   that growing copies one shard at a time.  A shard grows by a quarter
   when 90% full, so that it stays at least 72% full.  Shards of fewer
   than SMALL_SHARD_CAPACITY slots grow by several quarters at once, up
   to twice their size: copying them over and over would cost more than
   the memory saved.  A shard that empties to below 40% shrinks to 60%, so
   that the memory of a burst of traces is given back once they are
   gone. */

/* The invariants, which traces_check() verifies:

   - A pointer has at most one trace: in its leaf entry, in the spill, or
     (UINTPTR_MAX only) in the top slot.
   - count is the number of non-zero leaf entries plus the spill's traces
     (nspilled) plus has_top.
   - A leaf entry is non-zero only for a trace that fits one
     (entry_fits()), of a pointer aligned on a grain.
   - A non-zero entry of a small leaf is in the slot of its grain.
     nsmall counts the small leaves.
   - spilled[i] is the number of spill traces whose window has counter i,
     or SPILLED_STUCK, so that a zero there proves a pointer is not in
     the spill.
   - In a shard, every key lies within dist slots after its home slot,
     and no slot between its home and it is empty (linear probing), with
     count at most max_count < capacity.
   - A size of BIG_SIZE or more in the spill is kept in big, and only
     then. */

#define GRAIN_SHIFT (SIZEOF_VOID_P == 8 ? 4 : 3)   /* two pointers */
#define WINDOW_BITS 5
#define WINDOW_GRAINS (1 << WINDOW_BITS)
#define WINDOW_SHIFT (GRAIN_SHIFT + WINDOW_BITS)
#define MIN_WINDOWS_CAPACITY 64     /* a power of two */
#define MAX_WINDOWS_LOAD_PERCENT 75
#define ENTRY_SIZE_BITS 10
#ifdef Py_DEBUG
/* Low enough for the tests to spill traces for their traceback index */
#  define ENTRY_MAX_TRACEBACK 1000
#else
#  define ENTRY_MAX_TRACEBACK ((UINT32_MAX >> ENTRY_SIZE_BITS) - 1)
#endif
#define LEAF_MAX_SIZE 256           /* 2 blocks or more per 64-bit window */
#define LEAF_MIN_TRACES 3           /* fewer, and a rebuild spills them */
#define DEMOTE_MIN_WINDOWS 1024     /* in a table of at least this many leaves */
#define DENSE_TRACES_PER_LEAF 8     /* as many, and growing reads no leaf */
#define KEEP_EMPTY_WINDOWS 512      /* below, a table keeps its empty leaves */
#define SPILLED_BITS 14             /* counters of spilled traces */
#define SPILLED_STUCK UINT8_MAX     /* a counter that stays there */
/* Windows in the cache of recent ones: 16 KiB of slots for 512 KiB of
   address space.  With 32, frees missed it for most blocks that lived a
   while, and the window table's probe was a cache miss. */
#define RECENT_BITS 10
#define SMALL_SLOTS 8               /* entries of a small leaf */

#define SHARD_BITS 6
#define NSHARDS (1 << SHARD_BITS)
#define MIN_SHARD_CAPACITY 8
#define MAX_LOAD_PERCENT 90
#define MIN_LOAD_PERCENT 40         /* below it, a shard shrinks */
#define SHRUNK_LOAD_PERCENT 60      /* to this */
#define SMALL_SHARD_CAPACITY 256    /* below it, grow to about twice the size */
#define BIG_SIZE ((1 << 24) - 1)   /* the size is in traces->big */
#define DIST_MAX 255                /* the distance is computed */

typedef struct {
    /* Per grain: the trace of the block that starts there, packed as
       (traceback + 1) << ENTRY_SIZE_BITS | size, or 0. */
    uint32_t entries[WINDOW_GRAINS];
} leaf_t;

/* A leaf for a window of few traces: one entry per SMALL_GRAINS grains,
   with the grain it is for.  An entry that is 0 keeps its grain, for the
   block allocated there next, until another grain of its slot needs it. */
typedef struct {
    uint8_t grains[SMALL_SLOTS];
    uint32_t entries[SMALL_SLOTS];
} small_leaf_t;

#define SMALL_GRAINS (WINDOW_GRAINS / SMALL_SLOTS)

/* A leaf_t *, or a small_leaf_t * plus SMALL_TAG. */
typedef uintptr_t leaf_ref_t;
#define SMALL_TAG 1

typedef struct {
    uintptr_t window;           /* window_of() a pointer; 0 if empty */
    leaf_ref_t leaf;
} window_slot_t;

typedef struct {
    uintptr_t key;              /* ~ptr; 0 if the slot is empty */
    uint32_t size : 24;         /* size in bytes, or BIG_SIZE */
    uint32_t dist : 8;          /* distance from the home slot, at most
                                   DIST_MAX: Robin Hood compares them */
    uint32_t traceback;         /* index in interned->by_index */
} slot_t;

typedef struct {
    slot_t *slots;
    uint32_t capacity;
    uint32_t count;
    uint32_t max_count;         /* grow before count exceeds it */
} shard_t;

struct tracemalloc_traces {
    /* Non-zero if the owner map counts the traces of the table. */
    int counted;
    /* The leaves of windows used recently, direct mapped by
       recent_index(), window 0 if none: a cache of windows.  Leaf 0: the
       window has none. */
    window_slot_t recent[1 << RECENT_BITS];
    window_slot_t *windows;     /* NULL until the first leaf */
    uint32_t windows_capacity;  /* a power of two, or 0 */
    uint32_t nwindows;          /* empty leaves included */
    uint32_t nsmall;            /* how many of them are small */
    size_t count;               /* traces, in the leaves and the spill */
    size_t nspilled;            /* traces in the spill (top excluded) */
    /* Below this count, most leaves are empty: see rebuild_threshold() */
    size_t rebuild_below;
    shard_t shards[NSHARDS];    /* the spill */
    /* ptr => size of the blocks of BIG_SIZE bytes or more, or NULL */
    _Py_hashtable_t *big;
    /* Number of traces in the spill, by spilled_count() of their window,
       or SPILLED_STUCK */
    uint8_t spilled[1 << SPILLED_BITS];
    /* The trace of UINTPTR_MAX, which only the C API can track: its key in
       the spill would be that of an empty slot. */
    int has_top;
    uint32_t top_traceback;
    size_t top_size;
};

/* Most of a table's leaves are empty when nwindows > 2 * (traces in
   leaves) + KEEP_EMPTY_WINDOWS, and traces_pop() then rebuilds its window
   table.  This is the count below which that holds.  set_rebuild_below()
   keeps it in traces->rebuild_below after each change to nwindows,
   nspilled or has_top, so that a free asks with a single compare. */
static inline size_t
rebuild_threshold(traces_t *traces)
{
    if (traces->nwindows <= KEEP_EMPTY_WINDOWS) {
        return 0;
    }
    return (traces->nspilled + (size_t)traces->has_top
            + (traces->nwindows - KEEP_EMPTY_WINDOWS + 1) / 2);
}

static inline void
set_rebuild_below(traces_t *traces)
{
    traces->rebuild_below = rebuild_threshold(traces);
}


/* --- The spill: a sharded Robin Hood table --- */

/* Where a pointer goes.  Pointers within the same window go to the same
   shard, to slots 4 apart from a base chosen by hashing the window's
   address, so that neighbouring blocks touch neighbouring cache lines. */
static inline uint64_t
hash_window(uintptr_t ptr)
{
    /* Fibonacci hashing: the high bits depend on every bit of the window */
    return (uint64_t)(ptr >> WINDOW_SHIFT) * UINT64_C(0x9E3779B97F4A7C15);
}

static inline shard_t *
shard_of(traces_t *traces, uintptr_t ptr)
{
    return &traces->shards[hash_window(ptr) >> (64 - SHARD_BITS)];
}

/* The slot where ptr would be with no collision. */
static inline uint32_t
home_slot(uintptr_t ptr, uint32_t capacity)
{
    /* the next 32 bits of the hash, scaled to the capacity */
    uint64_t bits = (hash_window(ptr) >> (32 - SHARD_BITS)) & UINT32_MAX;
    uint64_t home = ((bits * capacity) >> 32)
                    + ((ptr >> GRAIN_SHIFT) & (WINDOW_GRAINS - 1)) * 4;
    return (uint32_t)(home < capacity ? home : home % capacity);
}

/* How far the key in slot i is from its home slot. */
static uint32_t
displacement(uintptr_t key, uint32_t i, uint32_t capacity)
{
    uint32_t home = home_slot(~key, capacity);
    return i >= home ? i - home : i + capacity - home;
}

/* How far the key of a full slot i is from its home slot: stored unless
   it is too far. */
static inline uint32_t
slot_dist(const slot_t *slot, uint32_t i, uint32_t capacity)
{
    if (slot->dist < DIST_MAX) {
        return slot->dist;
    }
    return displacement(slot->key, i, capacity);
}

static inline void
slot_set_dist(slot_t *slot, uint32_t dist)
{
    slot->dist = dist < DIST_MAX ? dist : DIST_MAX;
}

static slot_t *
shard_find(shard_t *shard, uintptr_t ptr)
{
    if (shard->count == 0 || ptr == UINTPTR_MAX) {
        return NULL;  /* its key would be 0, the empty slot: never stored */
    }
    uintptr_t key = ~ptr;
    uint32_t capacity = shard->capacity;
    uint32_t i = home_slot(ptr, capacity);
    for (uint32_t dist = 0; ; dist++) {
        slot_t *slot = &shard->slots[i];
        if (slot->key == key) {
            return slot;
        }
        /* Robin Hood: the key would have displaced a nearer one */
        if (slot->key == 0 || slot_dist(slot, i, capacity) < dist) {
            return NULL;
        }
        if (++i == capacity) {
            i = 0;
        }
    }
}

/* Put entry, whose key is not in the shard, at slot i, at distance dist
   from its home slot, where a lookup would stop: shift the nearer keys
   that follow along (Robin Hood).  The shard has room for it. */
static void
shard_insert_at(shard_t *shard, slot_t entry, uint32_t i, uint32_t dist)
{
    uint32_t capacity = shard->capacity;
    for (;; dist++) {
        slot_t *slot = &shard->slots[i];
        if (slot->key == 0) {
            *slot = entry;
            slot_set_dist(slot, dist);
            shard->count++;
            return;
        }
        uint32_t d = slot_dist(slot, i, capacity);
        if (d < dist) {
            slot_t nearer = *slot;
            *slot = entry;
            slot_set_dist(slot, dist);
            entry = nearer;
            dist = d;
        }
        if (++i == capacity) {
            i = 0;
        }
    }
}

static void
shard_insert(shard_t *shard, slot_t entry)
{
    shard_insert_at(shard, entry, home_slot(~entry.key, shard->capacity), 0);
}

static uint64_t
next_capacity(uint64_t capacity)
{
    return Py_MAX(MIN_SHARD_CAPACITY, capacity + capacity / 4 + 1);
}

/* Move the keys of the shard to new slots, capacity of them (0: none). */
static TM_SLOW_PATH int
shard_resize(shard_t *shard, uint64_t capacity)
{
    assert(capacity * MAX_LOAD_PERCENT / 100 >= shard->count);
    if (capacity > UINT32_MAX) {
        return -1;
    }
    slot_t *slots = NULL;
    if (capacity != 0) {
        slots = raw_calloc((size_t)capacity, sizeof(slot_t));
        if (slots == NULL) {
            return -1;
        }
    }
    shard_t resized = {slots, (uint32_t)capacity, 0,
                       (uint32_t)(capacity * MAX_LOAD_PERCENT / 100)};
    for (uint32_t i = 0; i < shard->capacity; i++) {
        slot_t *slot = &shard->slots[i];
        if (slot->key != 0) {
            shard_insert(&resized, *slot);
        }
    }
    raw_free(shard->slots);
    *shard = resized;
    return 0;
}

static int
shard_grow(shard_t *shard)
{
    uint64_t capacity = next_capacity(shard->capacity);
    while (capacity < SMALL_SHARD_CAPACITY
           && capacity < 2 * (uint64_t)shard->capacity)
    {
        capacity = next_capacity(capacity);
    }
    return shard_resize(shard, capacity);
}

/* After a removal: give back the memory of a shard that has emptied to
   below MIN_LOAD_PERCENT, down to SHRUNK_LOAD_PERCENT. */
static inline void
shard_maybe_shrink(shard_t *shard)
{
    if (shard->capacity <= MIN_SHARD_CAPACITY
        || ((uint64_t)shard->count * 100
            >= (uint64_t)shard->capacity * MIN_LOAD_PERCENT))
    {
        return;
    }
    uint64_t capacity = Py_MAX(MIN_SHARD_CAPACITY,
                               (uint64_t)shard->count * 100
                               / SHRUNK_LOAD_PERCENT);
    if (capacity < shard->capacity) {
        (void)shard_resize(shard, capacity);  /* or stay as it is */
    }
}

/* Remove the slot's key, shifting the keys displaced after it back. */
static void
shard_remove(shard_t *shard, slot_t *slot)
{
    uint32_t capacity = shard->capacity;
    uint32_t i = (uint32_t)(slot - shard->slots);
    for (;;) {
        uint32_t j = (i + 1 == capacity) ? 0 : i + 1;
        slot_t *next = &shard->slots[j];
        if (next->key == 0 || next->dist == 0) {
            break;
        }
        uint32_t dist = slot_dist(next, j, capacity);
        shard->slots[i] = *next;
        slot_set_dist(&shard->slots[i], dist - 1);
        i = j;
    }
    shard->slots[i].key = 0;
    shard->count--;
}

static size_t
slot_size(traces_t *traces, const slot_t *slot)
{
    if (slot->size != BIG_SIZE) {
        return slot->size;
    }
    return (size_t)_Py_hashtable_get(traces->big, TO_PTR(~slot->key));
}

/* Store the size of a slot, in the big table if it does not fit.  On
   memory error, return -1 and leave the slot as it was. */
static int
slot_set_size(traces_t *traces, slot_t *slot, uintptr_t ptr, size_t size)
{
    if (size < BIG_SIZE) {
        if (slot->size == BIG_SIZE) {
            _Py_hashtable_steal(traces->big, TO_PTR(ptr));
        }
        slot->size = (uint32_t)size;
        return 0;
    }
    if (slot->size == BIG_SIZE) {
        _Py_hashtable_get_entry(traces->big, TO_PTR(ptr))->value =
            (void *)(uintptr_t)size;
        return 0;
    }
    if (traces->big == NULL) {
        traces->big = hashtable_new(_Py_hashtable_hash_ptr,
                                    _Py_hashtable_compare_direct,
                                    NULL, NULL);
        if (traces->big == NULL) {
            return -1;
        }
    }
    if (_Py_hashtable_set(traces->big, TO_PTR(ptr),
                          (void *)(uintptr_t)size) < 0)
    {
        return -1;
    }
    slot->size = BIG_SIZE;
    return 0;
}

/* The count of the spilled traces of ptr's window, and of the windows
   that share its hash. */
static inline uint8_t *
spilled_count(traces_t *traces, uintptr_t ptr)
{
    return &traces->spilled[hash_window(ptr) >> (64 - SPILLED_BITS)];
}

static inline void
count_spilled(traces_t *traces, uintptr_t ptr, int delta)
{
    uint8_t *count = spilled_count(traces, ptr);
    if (*count != SPILLED_STUCK) {
        assert(delta > 0 || *count > 0);
        *count = (uint8_t)(*count + delta);
    }
}

static slot_t *
spill_find(traces_t *traces, uintptr_t ptr)
{
    return shard_find(shard_of(traces, ptr), ptr);
}

/* Set the trace of ptr in the spill.  Return 1 if it replaced one, storing
   the old size in *old_size, 0 if it is new, -1 on memory error. */
static int
spill_set(traces_t *traces, uintptr_t ptr, size_t size, uint32_t traceback,
          size_t *old_size)
{
    if (ptr == UINTPTR_MAX) {
        int had = traces->has_top;
        if (had) {
            *old_size = traces->top_size;
        }
        else {
            traces->has_top = 1;
            traces->count++;
            set_rebuild_below(traces);
        }
        traces->top_size = size;
        traces->top_traceback = traceback;
        return had;
    }
    shard_t *shard = shard_of(traces, ptr);
    if (shard->count >= shard->max_count) {
        if (shard_grow(shard) < 0) {
            return -1;
        }
    }
    /* One pass: find the key, or where it goes */
    uintptr_t key = ~ptr;
    uint32_t capacity = shard->capacity;
    uint32_t i = home_slot(ptr, capacity);
    uint32_t dist = 0;
    for (;; dist++) {
        slot_t *slot = &shard->slots[i];
        if (slot->key == key) {
            *old_size = slot_size(traces, slot);
            if (slot_set_size(traces, slot, ptr, size) < 0) {
                return -1;
            }
            slot->traceback = traceback;
            return 1;
        }
        if (slot->key == 0 || slot_dist(slot, i, capacity) < dist) {
            break;
        }
        if (++i == capacity) {
            i = 0;
        }
    }
    slot_t entry = {.key = key, .traceback = traceback};
    if (slot_set_size(traces, &entry, ptr, size) < 0) {
        return -1;
    }
    shard_insert_at(shard, entry, i, dist);
    count_spilled(traces, ptr, 1);
    traces->nspilled++;
    traces->count++;
    set_rebuild_below(traces);
    return 0;
}

/* Remove the trace of ptr from the spill.  Return 1 if there was one,
   storing its size in *size and, if traceback is not NULL, its traceback
   in *traceback; else return 0. */
static int
spill_pop(traces_t *traces, uintptr_t ptr, size_t *size, uint32_t *traceback)
{
    if (ptr == UINTPTR_MAX) {
        if (!traces->has_top) {
            return 0;
        }
        *size = traces->top_size;
        if (traceback != NULL) {
            *traceback = traces->top_traceback;
        }
        traces->has_top = 0;
        traces->count--;
        set_rebuild_below(traces);
        return 1;
    }
    shard_t *shard = shard_of(traces, ptr);
    slot_t *slot = shard_find(shard, ptr);
    if (slot == NULL) {
        return 0;
    }
    *size = slot_size(traces, slot);
    if (traceback != NULL) {
        *traceback = slot->traceback;
    }
    if (slot->size == BIG_SIZE) {
        _Py_hashtable_steal(traces->big, TO_PTR(ptr));
    }
    shard_remove(shard, slot);
    count_spilled(traces, ptr, -1);
    traces->nspilled--;
    traces->count--;
    set_rebuild_below(traces);
    shard_maybe_shrink(shard);
    return 1;
}


/* --- Leaves --- */

static inline int
has_leaf_entry(uintptr_t ptr)
{
    return (ptr & ((1 << GRAIN_SHIFT) - 1)) == 0;
}

/* The key of ptr's window: never 0. */
static inline uintptr_t
window_of(uintptr_t ptr)
{
    return (ptr >> WINDOW_SHIFT) + 1;
}

/* ptr's place in its window. */
static inline unsigned int
grain_of(uintptr_t ptr)
{
    return (unsigned int)(ptr >> GRAIN_SHIFT) & (WINDOW_GRAINS - 1);
}

static inline uint32_t *
leaf_entry(leaf_t *leaf, uintptr_t ptr)
{
    return &leaf->entries[grain_of(ptr)];
}

static inline int
is_small(leaf_ref_t ref)
{
    return (ref & SMALL_TAG) != 0;
}

static inline leaf_t *
as_leaf(leaf_ref_t ref)
{
    assert(!is_small(ref));
    return (leaf_t *)ref;
}

static inline small_leaf_t *
as_small(leaf_ref_t ref)
{
    assert(is_small(ref));
    return (small_leaf_t *)(ref - SMALL_TAG);
}

/* The slot of a small leaf for a grain. */
static inline unsigned int
small_slot(unsigned int grain)
{
    return grain / SMALL_GRAINS;
}

/* The entries of a leaf, and how many there are. */
static inline uint32_t *
leaf_entries(leaf_ref_t ref, int *n)
{
    if (is_small(ref)) {
        *n = SMALL_SLOTS;
        return as_small(ref)->entries;
    }
    *n = WINDOW_GRAINS;
    return as_leaf(ref)->entries;
}

/* The grain of the i-th of leaf_entries(ref). */
static inline unsigned int
leaf_grain(leaf_ref_t ref, int i)
{
    return is_small(ref) ? as_small(ref)->grains[i] : (unsigned int)i;
}

/* ptr's entry in a leaf, or NULL if it has none (a small leaf with no
   slot for its grain). */
static inline uint32_t *
entry_in(leaf_ref_t ref, uintptr_t ptr)
{
    if (!is_small(ref)) {
        return leaf_entry(as_leaf(ref), ptr);
    }
    small_leaf_t *small = as_small(ref);
    unsigned int grain = grain_of(ptr);
    unsigned int i = small_slot(grain);
    return small->grains[i] == grain ? &small->entries[i] : NULL;
}

static leaf_ref_t
small_leaf_new(void)
{
    small_leaf_t *small = raw_calloc(1, sizeof(small_leaf_t));
    if (small == NULL) {
        return 0;
    }
    return (leaf_ref_t)small + SMALL_TAG;
}

static void
leaf_free(traces_t *traces, leaf_ref_t ref)
{
    if (is_small(ref)) {
        raw_free(as_small(ref));
        traces->nsmall--;
    }
    else {
        raw_free(as_leaf(ref));
    }
}

static inline int
entry_fits(size_t size, uint32_t traceback)
{
    Py_BUILD_ASSERT(LEAF_MAX_SIZE < (1 << ENTRY_SIZE_BITS));
    return size <= LEAF_MAX_SIZE && traceback <= ENTRY_MAX_TRACEBACK;
}

static inline uint32_t
entry_pack(size_t size, uint32_t traceback)
{
    return ((traceback + 1) << ENTRY_SIZE_BITS) | (uint32_t)size;
}

static inline size_t
entry_size(uint32_t entry)
{
    return entry & ((1 << ENTRY_SIZE_BITS) - 1);
}

static inline uint32_t
entry_traceback(uint32_t entry)
{
    return (entry >> ENTRY_SIZE_BITS) - 1;
}

static inline uint32_t
window_home(uintptr_t window, uint32_t capacity)
{
    return (uint32_t)(((uint64_t)window * UINT64_C(0x9E3779B97F4A7C15)) >> 32)
           & (capacity - 1);
}

/* Where a window goes in traces->recent: its place in its pool of 16 KiB
   (32 windows) and the pool's number, mixed, so that the current pools of
   several size classes seldom evict each other. */
static inline uint32_t
recent_index(uintptr_t window)
{
    return (uint32_t)(window ^ (window >> 5)) & ((1 << RECENT_BITS) - 1);
}

static inline void
remember_leaf(traces_t *traces, uintptr_t window, leaf_ref_t leaf)
{
    traces->recent[recent_index(window)] = (window_slot_t){window, leaf};
}

/* The slot of a window in the window table, or NULL. */
static window_slot_t *
find_window(traces_t *traces, uintptr_t window)
{
    uint32_t capacity = traces->windows_capacity;
    if (capacity == 0) {
        return NULL;
    }
    for (uint32_t i = window_home(window, capacity); ;
         i = (i + 1) & (capacity - 1))
    {
        window_slot_t *slot = &traces->windows[i];
        if (slot->window == window) {
            return slot;
        }
        if (slot->window == 0) {
            return NULL;
        }
    }
}

/* The leaf of a window, or 0; it is remembered as a recent one, and so
   is a window that has none, until add_leaf() gives it one: the blocks of
   a program that were allocated before tracing started, and those kept
   on a free list since, are looked up at each free or reuse, and a probe
   for a window that is not there is the longest. */
static leaf_ref_t
find_leaf(traces_t *traces, uintptr_t window)
{
    window_slot_t *slot = find_window(traces, window);
    leaf_ref_t leaf = slot != NULL ? slot->leaf : 0;
    remember_leaf(traces, window, leaf);
    return leaf;
}

static void
windows_put(window_slot_t *windows, uint32_t capacity, window_slot_t slot)
{
    uint32_t i = window_home(slot.window, capacity);
    while (windows[i].window != 0) {
        i = (i + 1) & (capacity - 1);
    }
    windows[i] = slot;
}

/* The entries of a leaf that hold a trace: bit i for the i-th of
   leaf_entries(ref).  What a rebuild needs to know of a leaf, in one
   read. */
static uint32_t
leaf_used(leaf_ref_t ref)
{
    Py_BUILD_ASSERT(WINDOW_GRAINS <= 32);
    int n;
    const uint32_t *entries = leaf_entries(ref, &n);
    uint32_t used = 0;
    for (int i = 0; i < n; i++) {
        used |= (uint32_t)(entries[i] != 0) << i;
    }
    return used;
}

/* Give a window the leaf ref in place of its own. */
static void
replace_leaf(traces_t *traces, uintptr_t window, leaf_ref_t ref)
{
    window_slot_t *slot = find_window(traces, window);
    assert(slot != NULL);
    slot->leaf = ref;
    remember_leaf(traces, window, ref);
}

/* Replace a full small leaf by a leaf with an entry per grain.  Return
   the new leaf, or NULL on memory error (the small leaf stays). */
static TM_SLOW_PATH leaf_t *
leaf_grow(traces_t *traces, uintptr_t window, leaf_ref_t ref)
{
    leaf_t *leaf = raw_calloc(1, sizeof(leaf_t));
    if (leaf == NULL) {
        return NULL;
    }
    small_leaf_t *small = as_small(ref);
    for (int i = 0; i < SMALL_SLOTS; i++) {
        if (small->entries[i] != 0) {
            leaf->entries[small->grains[i]] = small->entries[i];
        }
    }
    replace_leaf(traces, window, (leaf_ref_t)leaf);
    leaf_free(traces, ref);
    return leaf;
}

/* Can the traces of a full leaf, used as leaf_used() says, go into a
   small leaf: at most one in each run of SMALL_GRAINS grains? */
static int
leaf_fits_small(uint32_t used)
{
    /* The bits of the grains followed by a used grain 1, 2 or 3 grains
       further in the same run */
    Py_BUILD_ASSERT(SMALL_GRAINS == 4 && WINDOW_GRAINS == 32);
    return ((used & (used >> 1) & UINT32_C(0x77777777))
            | (used & (used >> 2) & UINT32_C(0x33333333))
            | (used & (used >> 3) & UINT32_C(0x11111111))) == 0;
}

/* Replace a full leaf, used as leaf_used() says, by a small leaf if its
   traces fit one, within a rebuild of the window table (the slot is not
   in traces->windows).  On memory error, the leaf stays. */
static void
leaf_shrink(traces_t *traces, window_slot_t *slot, uint32_t used)
{
    leaf_t *leaf = as_leaf(slot->leaf);
    if (!leaf_fits_small(used)) {
        return;
    }
    leaf_ref_t ref = small_leaf_new();
    if (ref == 0) {
        return;
    }
    small_leaf_t *small = as_small(ref);
    for (unsigned int grain = 0; grain < WINDOW_GRAINS; grain++) {
        if (leaf->entries[grain] != 0) {
            small->grains[small_slot(grain)] = (uint8_t)grain;
            small->entries[small_slot(grain)] = leaf->entries[grain];
        }
    }
    raw_free(leaf);
    slot->leaf = ref;
    traces->nsmall++;
}

/* ptr's entry in a small leaf, which takes its slot if no trace is
   there.  If another grain's trace is, the leaf grows.  Return NULL on
   memory error. */
static inline uint32_t *
small_entry_for(traces_t *traces, leaf_ref_t ref, uintptr_t ptr)
{
    small_leaf_t *small = as_small(ref);
    unsigned int grain = grain_of(ptr);
    unsigned int i = small_slot(grain);
    if (small->grains[i] != grain) {
        if (small->entries[i] != 0) {
            leaf_t *leaf = leaf_grow(traces, window_of(ptr), ref);
            return leaf != NULL ? leaf_entry(leaf, ptr) : NULL;
        }
        small->grains[i] = (uint8_t)grain;
    }
    return &small->entries[i];
}

/* Move the traces of a leaf to the spill.  Return 0 if the leaf is empty
   now, -1 if memory ran out first (the traces not moved stay). */
static int
leaf_demote(traces_t *traces, uintptr_t window, leaf_ref_t ref)
{
    uintptr_t base = (window - 1) << WINDOW_SHIFT;
    int n;
    uint32_t *entries = leaf_entries(ref, &n);
    for (int i = 0; i < n; i++) {
        uint32_t entry = entries[i];
        if (entry == 0) {
            continue;
        }
        size_t old_size;
        uintptr_t ptr = base + ((uintptr_t)leaf_grain(ref, i) << GRAIN_SHIFT);
        if (spill_set(traces, ptr, entry_size(entry), entry_traceback(entry),
                      &old_size) < 0)
        {
            return -1;
        }
        entries[i] = 0;
        traces->count--;
    }
    return 0;
}

/* The number of traces in the leaves of a table. */
static inline size_t
traces_in_leaves(traces_t *traces)
{
    return traces->count - traces->nspilled - traces->has_top;
}

/* The capacity of a window table for n leaves: at most half full.  0 if
   it would be too large. */
static uint32_t
windows_capacity_for(uint64_t n)
{
    uint64_t capacity = MIN_WINDOWS_CAPACITY;
    while (capacity < 2 * (n + 1)) {
        capacity *= 2;
    }
    return capacity <= UINT32_MAX ? (uint32_t)capacity : 0;
}

/* Move the slots of the window table to a new one of the given capacity,
   at least windows_capacity_for(traces->nwindows).  Return -1 on memory
   error, the table unchanged. */
static int
windows_move(traces_t *traces, uint32_t capacity)
{
    window_slot_t *windows = raw_calloc(capacity, sizeof(window_slot_t));
    if (windows == NULL) {
        return -1;
    }
    for (uint32_t i = 0; i < traces->windows_capacity; i++) {
        if (traces->windows[i].window != 0) {
            windows_put(windows, capacity, traces->windows[i]);
        }
    }
    raw_free(traces->windows);
    traces->windows = windows;
    traces->windows_capacity = capacity;
    memset(traces->recent, 0, sizeof(traces->recent));
    return 0;
}

/* Within a rebuild, settle the leaf of a slot that is not in
   traces->windows: if demote is non-zero, move its traces to the spill if
   it has fewer than LEAF_MIN_TRACES, or else make it small if they fit;
   then free it if it is empty.  Return 0 if it was freed. */
static int
leaf_settle(traces_t *traces, window_slot_t *slot, int demote)
{
    uint32_t used = leaf_used(slot->leaf);
    if (demote && used != 0
        && _Py_popcount32(used) < LEAF_MIN_TRACES
        && leaf_demote(traces, slot->window, slot->leaf) == 0)
    {
        used = 0;
    }
    if (used == 0) {
        leaf_free(traces, slot->leaf);
        return 0;
    }
    if (demote && !is_small(slot->leaf)) {
        leaf_shrink(traces, slot, used);
    }
    return 1;
}

/* Rebuild the window table, at most half full, without the leaves that
   emptied, and, in a large table or if demote is non-zero, without the
   sparse ones, whose traces go to the spill; there, the leaves whose
   traces fit a small leaf become small.  Return -1 on memory error. */
static TM_SLOW_PATH int
windows_rebuild_ex(traces_t *traces, int demote)
{
    demote = demote || (traces->nwindows >= DEMOTE_MIN_WINDOWS);
    /* A small table keeps its empty leaves, unless compacted: blocks come
       back to the same windows, and mimalloc sweeps each of its pages
       before it reuses a block, so that a table dropping them made and
       freed a leaf for one allocation in three, and rebuilt itself every
       few dozen.  Every leaf then stays, and none needs reading. */
    int keep_empty = (!demote && traces->nwindows < KEEP_EMPTY_WINDOWS);
    /* The leaves that stay are not known before they are read, and they
       are read once, as they move: the new table is made for as many as
       can stay, then for those that did if they are far fewer.  At most
       one leaf per trace in a leaf stays. */
    uint64_t most = traces->nwindows;
    if (!keep_empty) {
        most = Py_MIN(most, traces_in_leaves(traces));
    }
    uint32_t capacity = windows_capacity_for(most);
    if (capacity == 0) {
        return -1;
    }
    window_slot_t *windows = raw_calloc(capacity, sizeof(window_slot_t));
    if (windows == NULL) {
        return -1;
    }
    uint32_t live = 0;
    for (uint32_t i = 0; i < traces->windows_capacity; i++) {
        window_slot_t slot = traces->windows[i];
        if (slot.window == 0) {
            continue;
        }
        if (!keep_empty && !leaf_settle(traces, &slot, demote)) {
            continue;
        }
        assert(live < most);    /* the table has room for it */
        windows_put(windows, capacity, slot);
        live++;
    }
    raw_free(traces->windows);
    traces->windows = windows;
    traces->windows_capacity = capacity;
    traces->nwindows = live;
    set_rebuild_below(traces);
    memset(traces->recent, 0, sizeof(traces->recent));
    uint32_t fitting = windows_capacity_for(live);
    if (fitting < capacity) {
        (void)windows_move(traces, fitting);   /* or stay larger */
    }
    return 0;
}

/* Rebuild the window table once most of its leaves may be empty. */
static int
windows_rebuild(traces_t *traces)
{
    return windows_rebuild_ex(traces, 0);
}

/* Make room for one more window.  Where the leaves hold
   DENSE_TRACES_PER_LEAF traces each on average, the table only moves to
   a larger one, without reading the leaves: the sparse or empty ones
   among them are not worth it, since the leaves and their slots (128
   bytes at most a leaf, 64 a slot at the lowest load of the new table)
   then cost at most 24 bytes per trace.  A burst of frees, or a growth
   that finds them sparser, drops them.  A program that builds a large
   structure of small objects grows its table ten times or more, and
   reading its leaves each time was most of what the rebuilds cost
   (`pickle`: 11 of the 12 rebuilds of a run). */
static int
windows_grow(traces_t *traces)
{
    if (traces_in_leaves(traces)
        >= (uint64_t)traces->nwindows * DENSE_TRACES_PER_LEAF)
    {
        uint32_t capacity = windows_capacity_for(traces->nwindows);
        return capacity != 0 ? windows_move(traces, capacity) : -1;
    }
    return windows_rebuild_ex(traces, 0);
}

/* Add an empty leaf for the window of a block of size bytes, which has
   none: a small one unless blocks of that size lie closer than a small
   leaf's slots.  It is remembered as a recent one.  Return 0 on memory
   error. */
static TM_SLOW_PATH leaf_ref_t
add_leaf(traces_t *traces, uintptr_t window, size_t size)
{
    if ((uint64_t)(traces->nwindows + 1) * 100
        > (uint64_t)traces->windows_capacity * MAX_WINDOWS_LOAD_PERCENT)
    {
        if (windows_grow(traces) < 0) {
            return 0;
        }
    }
    int small = (size > ((SMALL_GRAINS - 1) << GRAIN_SHIFT));
    leaf_ref_t ref = small ? small_leaf_new()
                           : (leaf_ref_t)raw_calloc(1, sizeof(leaf_t));
    if (ref == 0) {
        return 0;
    }
    windows_put(traces->windows, traces->windows_capacity,
                (window_slot_t){window, ref});
    traces->nwindows++;
    traces->nsmall += small;
    set_rebuild_below(traces);
    remember_leaf(traces, window, ref);
    return ref;
}

/* The leaf of ptr's window, or 0. */
static inline leaf_ref_t
leaf_of(traces_t *traces, uintptr_t ptr)
{
    uintptr_t window = window_of(ptr);
    window_slot_t *recent = &traces->recent[recent_index(window)];
    if (recent->window == window) {
        return recent->leaf;
    }
    return find_leaf(traces, window);
}

/* The entry of ptr, a block of size bytes, added if it has none (with a
   leaf for its window, if needed); NULL on memory error. */
static inline Py_ALWAYS_INLINE uint32_t *
entry_for(traces_t *traces, uintptr_t ptr, size_t size)
{
    leaf_ref_t ref = leaf_of(traces, ptr);
    if (ref == 0) {
        ref = add_leaf(traces, window_of(ptr), size);
        if (ref == 0) {
            return NULL;
        }
    }
    if (!is_small(ref)) {
        return leaf_entry(as_leaf(ref), ptr);
    }
    return small_entry_for(traces, ref, ptr);
}

/* ptr's entry in its leaf, or NULL if it has none (its window has no
   leaf, its small leaf no slot for it, or ptr is not aligned on a
   grain). */
static inline uint32_t *
find_entry(traces_t *traces, uintptr_t ptr)
{
    if (!has_leaf_entry(ptr)) {
        return NULL;
    }
    leaf_ref_t ref = leaf_of(traces, ptr);
    return ref != 0 ? entry_in(ref, ptr) : NULL;
}

/* Can ptr, whose leaf entry (if any) is 0, have a trace in the spill? */
static inline int
may_be_spilled(traces_t *traces, uintptr_t ptr)
{
    return !has_leaf_entry(ptr) || *spilled_count(traces, ptr) != 0;
}


/* --- A table: the leaves and the spill --- */

static traces_t *
traces_new(void)
{
    return raw_calloc(1, sizeof(traces_t));
}

static void
traces_destroy(traces_t *traces)
{
    for (uint32_t i = 0; i < traces->windows_capacity; i++) {
        if (traces->windows[i].window != 0) {
            leaf_free(traces, traces->windows[i].leaf);
        }
    }
    raw_free(traces->windows);
    for (int i = 0; i < NSHARDS; i++) {
        raw_free(traces->shards[i].slots);
    }
    if (traces->big != NULL) {
        _Py_hashtable_destroy(traces->big);
    }
    raw_free(traces);
}

/* Make a table that will change little from now on as small as it can
   be: its sparse leaves go to the spill whatever its size.  On memory
   error, it stays as it was, or part of the way. */
static void
traces_compact(traces_t *traces)
{
    if (traces->windows_capacity != 0) {
        (void)windows_rebuild_ex(traces, 1);
    }
}

static size_t
traces_memory(traces_t *traces)
{
    size_t size = sizeof(traces_t);
    size += (size_t)traces->windows_capacity * sizeof(window_slot_t);
    size += (size_t)(traces->nwindows - traces->nsmall) * sizeof(leaf_t);
    size += (size_t)traces->nsmall * sizeof(small_leaf_t);
    for (int i = 0; i < NSHARDS; i++) {
        size += (size_t)traces->shards[i].capacity * sizeof(slot_t);
    }
    if (traces->big != NULL) {
        size += _Py_hashtable_size(traces->big);
    }
    return size;
}

/* Find the trace of ptr: return 1 and store its size and traceback, or
   return 0.  Inline: _PyTraceMalloc_NewReference() asks for the block of
   each object taken from a free list, and most of those have no trace
   (they date from before the session): `simulation` asks 794,000 times
   a repetition, and 97% miss; the call and its register saves were a
   third of what a miss cost. */
static inline Py_ALWAYS_INLINE int
traces_get(traces_t *traces, uintptr_t ptr, size_t *size,
           uint32_t *traceback)
{
    uint32_t *entry = find_entry(traces, ptr);
    if (entry != NULL && *entry != 0) {
        *size = entry_size(*entry);
        *traceback = entry_traceback(*entry);
        return 1;
    }
    if (ptr == UINTPTR_MAX) {
        *size = traces->top_size;
        *traceback = traces->top_traceback;
        return traces->has_top;
    }
    slot_t *slot = may_be_spilled(traces, ptr) ? spill_find(traces, ptr)
                                               : NULL;
    if (slot == NULL) {
        return 0;
    }
    *size = slot_size(traces, slot);
    *traceback = slot->traceback;
    return 1;
}

/* Set the trace of ptr, which does not fit a leaf entry, in the spill. */
static int
traces_spill(traces_t *traces, uintptr_t ptr, size_t size,
             uint32_t traceback, size_t *old_size)
{
    uint32_t *entry = find_entry(traces, ptr);
    if (entry == NULL || *entry == 0) {
        return spill_set(traces, ptr, size, traceback, old_size);
    }
    /* the trace moves from the leaf to the spill */
    int res = spill_set(traces, ptr, size, traceback, old_size);
    if (res < 0) {
        return -1;
    }
    assert(res == 0);
    *old_size = entry_size(*entry);
    *entry = 0;
    traces->count--;
    return 1;
}

/* Set the trace of ptr.  Return 1 if it replaced one, storing the old size
   in *old_size, 0 if it is new, -1 on memory error (the table is then
   unchanged). */
static inline Py_ALWAYS_INLINE int
traces_set(traces_t *traces, uintptr_t ptr, size_t size, uint32_t traceback,
           size_t *old_size)
{
    if (!has_leaf_entry(ptr) || !entry_fits(size, traceback)) {
        return traces_spill(traces, ptr, size, traceback, old_size);
    }
    uint32_t *entry = entry_for(traces, ptr, size);
    if (entry == NULL) {
        return -1;
    }
    uint32_t old = *entry;
    *entry = entry_pack(size, traceback);
    if (old != 0) {
        *old_size = entry_size(old);
        return 1;
    }
    traces->count++;
    if (may_be_spilled(traces, ptr)
        && spill_pop(traces, ptr, old_size, NULL))
    {
        return 1;  /* the trace moved from the spill to the leaf */
    }
    return 0;
}

/* Remove the trace of ptr.  Return 1 if there was one, storing its size in
   *size and, if traceback is not NULL, its traceback in *traceback; else
   return 0. */
static inline Py_ALWAYS_INLINE int
traces_pop(traces_t *traces, uintptr_t ptr, size_t *size, uint32_t *traceback)
{
    uint32_t *entry = find_entry(traces, ptr);
    if (entry != NULL && *entry != 0) {
        *size = entry_size(*entry);
        if (traceback != NULL) {
            *traceback = entry_traceback(*entry);
        }
        *entry = 0;
        traces->count--;
        if (traces->count < traces->rebuild_below) {
            /* Most leaves are empty: a burst of blocks was freed. */
            (void)windows_rebuild(traces);  /* or stay as it is */
        }
        return 1;
    }
    return (may_be_spilled(traces, ptr)
            && spill_pop(traces, ptr, size, traceback));
}


/* Call visit(arg, ptr, size, traceback) for each trace: leaf by leaf,
   then those of the spill.  Inlined, so that a constant visitor is too:
   a snapshot copies millions. */
typedef void (*traces_visitor_t)(void *arg, uintptr_t ptr, size_t size,
                                 uint32_t traceback);

static inline Py_ALWAYS_INLINE void
traces_foreach(traces_t *traces, traces_visitor_t visit, void *arg)
{
    for (uint32_t i = 0; i < traces->windows_capacity; i++) {
        window_slot_t *slot = &traces->windows[i];
        if (slot->window == 0) {
            continue;
        }
        uintptr_t base = (slot->window - 1) << WINDOW_SHIFT;
        int n;
        uint32_t *entries = leaf_entries(slot->leaf, &n);
        for (int j = 0; j < n; j++) {
            uint32_t entry = entries[j];
            if (entry != 0) {
                uintptr_t grain = leaf_grain(slot->leaf, j);
                visit(arg, base + (grain << GRAIN_SHIFT),
                      entry_size(entry), entry_traceback(entry));
            }
        }
    }
    for (int i = 0; i < NSHARDS; i++) {
        shard_t *shard = &traces->shards[i];
        for (uint32_t j = 0; j < shard->capacity; j++) {
            slot_t *slot = &shard->slots[j];
            if (slot->key != 0) {
                visit(arg, ~slot->key, slot_size(traces, slot),
                      slot->traceback);
            }
        }
    }
    if (traces->has_top) {
        visit(arg, UINTPTR_MAX, traces->top_size, traces->top_traceback);
    }
}

/* Check the invariants of the table (see the top of this file).  Return 0
   if they hold, else -1 with *what saying which one does not.  Walks the
   whole table: for the tests. */
static int
shard_check(traces_t *traces, shard_t *shard, size_t *count,
            uint32_t *spilled, const char **what)
{
    uint32_t n = 0;
    for (uint32_t i = 0; i < shard->capacity; i++) {
        slot_t *slot = &shard->slots[i];
        if (slot->key == 0) {
            continue;
        }
        uintptr_t ptr = ~slot->key;
        n++;
        if (shard_of(traces, ptr) != shard) {
            *what = "a spilled trace is in the wrong shard";
            return -1;
        }
        uint32_t dist = displacement(slot->key, i, shard->capacity);
        if (slot->dist != (dist < DIST_MAX ? dist : DIST_MAX)) {
            *what = "a spill slot has the wrong distance";
            return -1;
        }
        for (uint32_t d = 1; d <= dist; d++) {
            uint32_t j = (i + shard->capacity - d) % shard->capacity;
            if (shard->slots[j].key == 0) {
                *what = "an empty slot lies between a key and its home";
                return -1;
            }
        }
        if ((slot->size == BIG_SIZE)
            != (traces->big != NULL
                && _Py_hashtable_get_entry(traces->big, TO_PTR(ptr)) != NULL))
        {
            *what = "a big size is not in the big table, or the reverse";
            return -1;
        }
        uint32_t *entry = find_entry(traces, ptr);
        if (entry != NULL && *entry != 0) {
            *what = "a pointer has a trace in its leaf and in the spill";
            return -1;
        }
        spilled[hash_window(ptr) >> (64 - SPILLED_BITS)]++;
    }
    if (n != shard->count || n > shard->max_count
        || (shard->capacity != 0 && shard->max_count >= shard->capacity))
    {
        *what = "a shard's count is wrong, or over its load";
        return -1;
    }
    *count += n;
    return 0;
}

/* Each slot of a small leaf is for a grain of its own. */
static int
small_check(leaf_ref_t ref, const char **what)
{
    small_leaf_t *small = as_small(ref);
    for (unsigned int i = 0; i < SMALL_SLOTS; i++) {
        if (small->grains[i] >= WINDOW_GRAINS
            || (small->entries[i] != 0 && small_slot(small->grains[i]) != i))
        {
            *what = "a slot of a small leaf holds another slot's grain";
            return -1;
        }
    }
    return 0;
}

static int
traces_check(traces_t *traces, const char **what)
{
    for (int i = 0; i < (1 << RECENT_BITS); i++) {
        window_slot_t *recent = &traces->recent[i];
        if (recent->window == 0) {
            continue;
        }
        window_slot_t *slot = find_window(traces, recent->window);
        if (recent->leaf != (slot != NULL ? slot->leaf : 0)) {
            *what = "a recent window does not have the leaf it remembers";
            return -1;
        }
    }
    size_t count = traces->has_top;
    uint32_t nwindows = 0, nsmall = 0;
    for (uint32_t i = 0; i < traces->windows_capacity; i++) {
        window_slot_t *slot = &traces->windows[i];
        if (slot->window == 0) {
            continue;
        }
        nwindows++;
        if (find_leaf(traces, slot->window) != slot->leaf) {
            *what = "a leaf cannot be found from its window";
            return -1;
        }
        if (is_small(slot->leaf) && small_check(slot->leaf, what) < 0) {
            return -1;
        }
        nsmall += is_small(slot->leaf);
        int n;
        uint32_t *entries = leaf_entries(slot->leaf, &n);
        for (int j = 0; j < n; j++) {
            uint32_t entry = entries[j];
            if (entry != 0 && !entry_fits(entry_size(entry),
                                          entry_traceback(entry)))
            {
                *what = "a leaf entry holds a trace that does not fit";
                return -1;
            }
            count += (entry != 0);
        }
    }
    if (nwindows != traces->nwindows || nsmall != traces->nsmall) {
        *what = "nwindows or nsmall is not the number of leaves";
        return -1;
    }
    uint32_t *spilled = raw_calloc(1 << SPILLED_BITS, sizeof(uint32_t));
    if (spilled == NULL) {
        *what = "no memory to check the table";
        return -1;
    }
    int res = 0;
    size_t nspilled = 0;
    for (int i = 0; i < NSHARDS && res == 0; i++) {
        res = shard_check(traces, &traces->shards[i], &nspilled, spilled,
                          what);
    }
    count += nspilled;
    for (int i = 0; i < (1 << SPILLED_BITS) && res == 0; i++) {
        if (traces->spilled[i] != spilled[i]
            && traces->spilled[i] != SPILLED_STUCK)
        {
            *what = "the counts of spilled traces by window are wrong";
            res = -1;
        }
    }
    raw_free(spilled);
    if (res == 0 && nspilled != traces->nspilled) {
        *what = "nspilled is not the number of traces in the spill";
        res = -1;
    }
    if (res == 0 && count != traces->count) {
        *what = "count is not the number of traces";
        res = -1;
    }
    if (res == 0 && traces->rebuild_below != rebuild_threshold(traces)) {
        *what = "rebuild_below is out of date";
        res = -1;
    }
    return res;
}
