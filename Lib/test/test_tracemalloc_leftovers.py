"""Tests for the leftovers of interpreters that ended while tracing, and for
the overview of every interpreter (tracemalloc.get_leftovers(),
clear_leftovers() and get_interpreters()).

Every scenario that ends an interpreter runs in a child process, so that
the leftovers of one test are not seen by another.  A subinterpreter leaks
on purpose with _testinternalcapi.tracemalloc_raw_malloc(), from code whose
file name is known, so that its trace is easy to find.
"""

import json
import textwrap
import unittest
from test import support
from test.support import import_helper
from test.support import os_helper
from test.support import script_helper

import_helper.import_module('_interpreters')
import_helper.import_module('_testinternalcapi')


# Larger than what a release build's interpreter leaves from any one place,
# so that the report lists it first.
LEAK_SIZE = 1_234_567

# The source every child process starts with.
PRELUDE = textwrap.dedent('''
    import json, os, sys, threading, tracemalloc
    import _interpreters, _testinternalcapi

    LEAK_SIZE = %d

    def run(interp, source):
        excinfo = _interpreters.exec(interp, source)
        if excinfo is not None:
            raise RuntimeError(excinfo.errdisplay)

    def run_for_result(interp, source):
        """Run source in interp; return the str of what it assigns to
        result."""
        rfd, wfd = os.pipe()
        try:
            run(interp, source + "\\nimport os as _os\\n"
                        f"_os.write({wfd}, str(result).encode())\\n")
        finally:
            os.close(wfd)
        with open(rfd, 'rb') as rfile:
            return rfile.read().decode()

    def leak_in_new_interp(config='isolated', filename='leak.py',
                           start=None):
        """Create an interpreter of config, which starts tracing with start
        frames if start is given, make it leak a raw block of LEAK_SIZE
        bytes from code of filename, destroy it, and return (its id, the
        address of the block)."""
        interp = _interpreters.create(config)
        leak = f"ptr = _testinternalcapi.tracemalloc_raw_malloc({LEAK_SIZE})"
        ptr = run_for_result(interp, f"""if True:
            import tracemalloc, _testinternalcapi
            if {start!r}:
                tracemalloc.start({start!r})
            exec(compile({leak!r}, {filename!r}, 'exec'))
            result = ptr
        """)
        _interpreters.destroy(interp)
        return interp, int(ptr)

    def leftovers_of(interp):
        """The leftovers of interp, an empty snapshot if none."""
        return tracemalloc.get_leftovers().get(interp,
                                               tracemalloc.Snapshot([], 1))

    def leak_traces(snapshot, filename='leak.py'):
        return [trace for trace in snapshot.traces
                if any(frame.filename == filename
                       for frame in trace.traceback)]

    def report(**results):
        print(json.dumps(results))
''' % LEAK_SIZE)


def run_child(source, *xoptions, err=False):
    """Run PRELUDE + source in a child process with the -X options given;
    return what it passed to report(), and its stderr if err is true."""
    args = []
    for option in xoptions:
        args += ['-X', option]
    args += ['-c', PRELUDE + textwrap.dedent(source)]
    res = script_helper.assert_python_ok(*args)
    results = json.loads(res.out.decode().splitlines()[-1])
    if err:
        return results, res.err.decode()
    return results


class LeftoversTests(unittest.TestCase):

    def check_leak_left(self, config):
        results = run_child(f'''
            interp, ptr = leak_in_new_interp({config!r})
            snapshots = tracemalloc.get_leftovers()
            snapshot = snapshots.get(interp)
            traces = leak_traces(snapshot) if snapshot else []
            report(ids=list(snapshots), interp=interp,
                   limit=snapshot and snapshot.traceback_limit,
                   sizes=[trace.size for trace in traces])
        ''', 'tracemalloc=5')
        self.assertIn(results['interp'], results['ids'])
        self.assertEqual(results['limit'], 5)
        self.assertEqual(results['sizes'], [LEAK_SIZE])

    def test_isolated_subinterpreter_leaves_its_leak(self):
        self.check_leak_left('isolated')

    def test_legacy_subinterpreter_leaves_its_leak(self):
        self.check_leak_left('legacy')

    def test_sub_that_started_itself_leaves_leftovers(self):
        # The main interpreter does not trace: the hooks stay installed
        # for the leftovers, so that their frees are seen.
        results = run_child('''
            interp, ptr = leak_in_new_interp(start=3)
            snapshot = leftovers_of(interp)
            before = len(leak_traces(snapshot))
            _testinternalcapi.tracemalloc_raw_free(ptr)
            report(main_tracing=tracemalloc.is_tracing(), before=before,
                   limit=snapshot.traceback_limit,
                   after=len(leak_traces(leftovers_of(interp))))
        ''')
        self.assertFalse(results['main_tracing'])
        self.assertEqual(results['before'], 1)
        self.assertEqual(results['after'], 0)
        self.assertEqual(results['limit'], 3)

    def test_sub_that_does_not_trace_leaves_nothing(self):
        results = run_child('''
            tracemalloc.start()
            interp, ptr = leak_in_new_interp()
            report(leftovers=list(tracemalloc.get_leftovers()))
        ''')
        self.assertEqual(results['leftovers'], [])

    def test_block_freed_after_its_interpreter_ended(self):
        results = run_child('''
            interp, ptr = leak_in_new_interp()
            before = len(leak_traces(leftovers_of(interp)))
            _testinternalcapi.tracemalloc_raw_free(ptr)
            report(before=before, after=len(leak_traces(leftovers_of(interp))))
        ''', 'tracemalloc=5')
        self.assertEqual(results, {'before': 1, 'after': 0})

    def test_block_freed_by_another_subinterpreter(self):
        results = run_child('''
            interp, ptr = leak_in_new_interp()
            other = _interpreters.create()
            run(other, f"import _testinternalcapi; "
                       f"_testinternalcapi.tracemalloc_raw_free({ptr})")
            report(after=len(leak_traces(leftovers_of(interp))))
        ''', 'tracemalloc=5')
        self.assertEqual(results['after'], 0)

    def test_clear_leftovers(self):
        results = run_child('''
            interp, ptr = leak_in_new_interp()
            before = len(tracemalloc.get_leftovers())
            tracemalloc.clear_leftovers()
            ended = [row for row in tracemalloc.get_interpreters()
                     if row.ended]
            # the block, no longer traced, can still be freed
            _testinternalcapi.tracemalloc_raw_free(ptr)
            report(before=before, after=len(tracemalloc.get_leftovers()),
                   ended=len(ended))
        ''', 'tracemalloc=5')
        self.assertEqual(results, {'before': 1, 'after': 0, 'ended': 0})

    def test_leftovers_of_several_interpreters(self):
        results = run_child('''
            ids = [leak_in_new_interp(config)[0]
                   for config in ('isolated', 'legacy', 'isolated')]
            snapshots = tracemalloc.get_leftovers()
            report(ids=ids, found=[len(leak_traces(snapshots[i]))
                                   for i in ids])
        ''', 'tracemalloc')
        self.assertEqual(results['found'], [1, 1, 1])

    def test_filenames_outlive_their_interpreter(self):
        filename = 'fuite_\xe9\u20ac\U0001f600_\udc80.py'
        results = run_child(f'''
            interp, ptr = leak_in_new_interp(filename={filename!r})
            # the interpreter's objects are gone: make new ones meanwhile
            junk = [str(i) * 3 for i in range(10_000)]
            snapshot = tracemalloc.get_leftovers()[interp]
            frames = [frame
                      for trace in leak_traces(snapshot, {filename!r})
                      for frame in trace.traceback
                      if frame.filename != '<string>']
            report(types=[type(frame.filename).__name__ for frame in frames],
                   names=[ascii(frame.filename) for frame in frames],
                   linenos=[frame.lineno for frame in frames])
        ''', 'tracemalloc=5')
        self.assertEqual(results['types'], ['str'])
        self.assertEqual(results['names'], [ascii(filename)])
        self.assertEqual(results['linenos'], [1])

    def test_snapshot_api(self):
        with os_helper.temp_dir() as tmp:
            results = run_child(f'''
                import os
                interp, ptr = leak_in_new_interp()
                snapshot = tracemalloc.get_leftovers()[interp]
                stats = snapshot.statistics('lineno')
                diff = snapshot.compare_to(tracemalloc.Snapshot([], 1),
                                           'filename')
                filtered = snapshot.filter_traces(
                    [tracemalloc.Filter(True, 'leak.py')])
                path = os.path.join({tmp!r}, 'leftovers.pickle')
                snapshot.dump(path)
                loaded = tracemalloc.Snapshot.load(path)
                report(total=sum(stat.size for stat in stats),
                       ntraces=len(snapshot.traces),
                       diff=sum(stat.size_diff for stat in diff),
                       filtered=[trace.size for trace in filtered.traces],
                       loaded=len(loaded.traces) == len(snapshot.traces),
                       same=loaded.statistics('traceback')
                            == snapshot.statistics('traceback'))
            ''', 'tracemalloc=5')
        self.assertGreaterEqual(results['total'], LEAK_SIZE)
        self.assertEqual(results['diff'], results['total'])
        self.assertEqual(results['filtered'], [LEAK_SIZE])
        self.assertTrue(results['loaded'])
        self.assertTrue(results['same'])


class StartUpTests(unittest.TestCase):

    def test_subinterpreter_traces_its_start_up(self):
        # Under -X tracemalloc, the import system's bootstrap, which runs
        # before the interpreter's first line of Python, is traced.
        results = run_child('''
            interp = _interpreters.create()
            n = run_for_result(interp, """if True:
                import tracemalloc
                result = sum(
                    1 for trace in tracemalloc.take_snapshot().traces
                    for frame in trace.traceback
                    if frame.filename == '<frozen importlib._bootstrap>')
            """)
            _interpreters.destroy(interp)
            report(n=int(n))
        ''', 'tracemalloc=25')
        self.assertGreater(results['n'], 0)


class InterpretersTests(unittest.TestCase):

    def test_rows_of_live_and_ended_interpreters(self):
        results = run_child('''
            live = _interpreters.create()
            run(live, "import tracemalloc; tracemalloc.start(7); "
                      "data = bytes(100_000)")
            ended, ptr = leak_in_new_interp(start=4)
            rows = {row.id: row._asdict()
                    for row in tracemalloc.get_interpreters()}
            fields = tracemalloc.InterpreterStats._fields
            _interpreters.destroy(live)
            report(rows=rows, live=live, ended=ended, fields=fields)
        ''')
        rows = {int(k): v for k, v in results['rows'].items()}
        self.assertEqual(results['fields'],
                         ['id', 'traceback_limit', 'traced', 'peak',
                          'traces', 'tracemalloc_memory', 'ended'])
        # the main interpreter does not trace: no row
        self.assertEqual(sorted(rows), sorted([results['live'],
                                               results['ended']]))
        live = rows[results['live']]
        self.assertEqual(live['traceback_limit'], 7)
        self.assertFalse(live['ended'])
        self.assertGreaterEqual(live['traced'], 100_000)
        self.assertGreaterEqual(live['peak'], live['traced'])
        self.assertGreater(live['traces'], 0)
        self.assertGreater(live['tracemalloc_memory'], 0)
        ended = rows[results['ended']]
        self.assertEqual(ended['traceback_limit'], 4)
        self.assertTrue(ended['ended'])
        self.assertGreaterEqual(ended['traced'], LEAK_SIZE)
        self.assertGreaterEqual(ended['traces'], 1)
        self.assertGreater(ended['tracemalloc_memory'], 0)

    def test_rows_agree_with_the_calling_interpreter(self):
        results = run_child('''
            tracemalloc.start(3)
            row = [row for row in tracemalloc.get_interpreters()
                   if row.id == 0][0]
            report(limit=row.traceback_limit, ended=row.ended,
                   traced=row.traced, mine=tracemalloc.get_traced_memory()[0])
        ''')
        self.assertEqual(results['limit'], 3)
        self.assertFalse(results['ended'])
        self.assertAlmostEqual(results['traced'], results['mine'],
                               delta=100_000)

    def test_while_another_thread_creates_and_destroys(self):
        results = run_child('''
            done = threading.Event()
            def churn():
                while not done.is_set():
                    interp = _interpreters.create()
                    run(interp, "import tracemalloc; data = [0] * 1000")
                    _interpreters.destroy(interp)
            thread = threading.Thread(target=churn)
            thread.start()
            bad = []
            ncalls = 0
            try:
                for _ in range(300):
                    for row in tracemalloc.get_interpreters():
                        ncalls += 1
                        if (row.traced < 0 or row.traces < 0
                                or (not row.ended and row.peak < row.traced)
                                or row.traceback_limit != 2
                                or (row.traces == 0 and row.traced != 0)):
                            bad.append(tuple(row))
            finally:
                done.set()
                thread.join()
            report(bad=bad, ncalls=ncalls)
        ''', 'tracemalloc=2')
        self.assertEqual(results['bad'], [])
        self.assertGreater(results['ncalls'], 0)

    def test_tracemalloc_memory_of_leftovers(self):
        results = run_child('''
            interp, ptr = leak_in_new_interp(start=1)
            with_leftovers = tracemalloc.get_tracemalloc_memory()
            tracemalloc.clear_leftovers()
            report(before=with_leftovers,
                   after=tracemalloc.get_tracemalloc_memory())
        ''')
        # The main interpreter, which does not trace, counts the leftovers
        self.assertGreater(results['before'], 0)
        self.assertEqual(results['after'], 0)


class ReportTests(unittest.TestCase):

    def test_report_names_the_leak(self):
        results, err = run_child('''
            interp, ptr = leak_in_new_interp(filename='leak_report.py')
            report(interp=interp)
        ''', 'tracemalloc=5', 'tracemalloc_leftovers=3', err=True)
        lines = err.splitlines()
        summary = [line for line in lines
                   if line.startswith('tracemalloc: interpreter %d ended'
                                      % results['interp'])]
        self.assertEqual(len(summary), 1, err)
        self.assertRegex(summary[0], r'leaving \d+ traced blocks, \d+ bytes$')
        self.assertLessEqual(len([line for line in lines
                                  if line.startswith('#')]), 3)
        self.assertIn('  File "leak_report.py", line 1', lines)

    def test_report_summary_only(self):
        results, err = run_child('''
            interp, ptr = leak_in_new_interp()
            report(interp=interp)
        ''', 'tracemalloc', 'tracemalloc_leftovers=0', err=True)
        self.assertIn('tracemalloc: interpreter %d ended' % results['interp'],
                      err)
        self.assertNotIn('File "', err)

    def test_no_report_without_the_option(self):
        results, err = run_child('''
            interp, ptr = leak_in_new_interp()
            report(interp=interp)
        ''', 'tracemalloc', err=True)
        self.assertNotIn('tracemalloc:', err)


class AcceptanceTests(unittest.TestCase):

    @support.requires_resource('cpu')
    def test_leftovers_explain_the_growth_of_allocated_blocks(self):
        # What isolated interpreters that import a few modules leave is
        # mostly traced as their leftovers.
        results = run_child('''
            def cycle():
                interp = _interpreters.create()
                run(interp, "import json, re, decimal, asyncio")
                _interpreters.destroy(interp)
            cycle()   # what the first one leaves in the main interpreter
            tracemalloc.clear_leftovers()
            before = sys.getallocatedblocks()
            for _ in range(5):
                cycle()
            growth = sys.getallocatedblocks() - before
            left = sum(row.traces for row in tracemalloc.get_interpreters()
                       if row.ended)
            report(growth=growth, left=left)
        ''', 'tracemalloc=25')
        # The release build leaves about 12,000 blocks per cycle, the debug
        # build next to none: a few blocks of the main interpreter's own
        # may come and go meanwhile.
        self.assertGreaterEqual(results['left'], 0.9 * results['growth'] - 10,
                                results)


if __name__ == "__main__":
    unittest.main()
