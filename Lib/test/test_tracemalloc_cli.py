"""Tests of the command line of tracemalloc: python -m tracemalloc."""

import html.parser
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import textwrap
import tracemalloc
import unittest
from test import support
from test.support import os_helper

support.requires_subprocess()

BIG = 30 * 1024 * 1024
ROW = re.compile(r' *[0-9]+ +[0-9.]+ (B|KiB|MiB|GiB|TiB) ')


def snapshot_of(*traces, limit=5):
    """Make a Snapshot from (size, frames) pairs, frames most recent first
    as (filename, lineno), like the tuples of _tracemalloc._get_traces().
    A third item, if any, is the traceback's total_nframe."""
    raw = []
    for size, frames, *total in traces:
        frames = tuple(frames)
        raw.append((0, size, frames, total[0] if total else len(frames)))
    return tracemalloc.Snapshot(raw, limit)


# 30 MiB in one block at big.py:7, 4196 B in three blocks in small.py.
SNAPSHOT = snapshot_of(
    (BIG, [('big.py', 7), ('main.py', 1)]),
    (2048, [('small.py', 3), ('main.py', 2)]),
    (2048, [('small.py', 3), ('main.py', 2)]),
    (100, [('small.py', 4), ('main.py', 2)]),
)


def stacks_of(snapshot):
    """{frames oldest first: [size, count]} of a snapshot."""
    stacks = {}
    for _domain, size, frames, _total in snapshot.traces._traces:
        entry = stacks.setdefault(tuple(reversed(frames)), [0, 0])
        entry[0] += size
        entry[1] += 1
    return stacks


class CommandLineTestCase(unittest.TestCase):

    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.addCleanup(os_helper.rmtree, self.dir)

    def path(self, name):
        return os.path.join(self.dir, name)

    def dump(self, snapshot, name='snapshot.out'):
        path = self.path(name)
        snapshot.dump(path)
        return path

    def write(self, name, text):
        path = self.path(name)
        with open(path, 'w', encoding='utf-8') as file:
            file.write(textwrap.dedent(text))
        return path

    def python(self, *args):
        """Run the interpreter with ARGS in the test directory."""
        env = dict(os.environ, COLUMNS='80')
        env.pop('PYTHONTRACEMALLOC', None)
        return subprocess.run([sys.executable, *args], cwd=self.dir, env=env,
                              capture_output=True, text=True,
                              encoding='utf-8', errors='replace')

    def tracemalloc(self, *args):
        return self.python('-m', 'tracemalloc', *args)

    def assert_ok(self, proc):
        self.assertEqual(proc.returncode, 0, proc.stderr)
        return proc

    def assert_usage_error(self, proc):
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertIn('usage: python -m tracemalloc', proc.stderr)
        self.assertNotIn('Traceback', proc.stderr)

    def assert_file_error(self, proc, message):
        """One line on stderr, exit status 2, nothing on stdout."""
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertEqual(proc.stdout, '')
        self.assertEqual(len(proc.stderr.splitlines()), 1, proc.stderr)
        self.assertIn('error: ', proc.stderr)
        self.assertIn(message, proc.stderr)

    def assert_fits(self, text, width=80):
        for line in text.splitlines():
            self.assertLessEqual(len(line), width, line)

    def rows(self, text):
        """The table rows of a report: the lines that start with a rank
        and a size, split on spaces."""
        return [line.split() for line in text.splitlines()
                if ROW.match(line)]


class HelpTests(CommandLineTestCase):

    def test_help(self):
        for command in ([], ['run'], ['top'], ['diff'], ['flamegraph']):
            with self.subTest(command=command):
                proc = self.assert_ok(self.tracemalloc(*command, '--help'))
                self.assertTrue(proc.stdout.startswith(
                    'usage: python -m tracemalloc'), proc.stdout)
                self.assert_fits(proc.stdout)

    def test_help_lists_commands(self):
        proc = self.assert_ok(self.tracemalloc('--help'))
        for command in ('run', 'top', 'diff', 'flamegraph'):
            self.assertIn(f'    {command} ', proc.stdout)

    def test_no_command(self):
        self.assert_usage_error(self.tracemalloc())

    def test_unknown_command(self):
        self.assert_usage_error(self.tracemalloc('show', 'x'))

    def test_missing_arguments(self):
        for args in (['top'], ['diff', 'old'], ['flamegraph'], ['run'],
                     ['run', '-n', '3']):
            with self.subTest(args=args):
                self.assert_usage_error(self.tracemalloc(*args))

    def test_bad_option_values(self):
        path = self.dump(SNAPSHOT)
        for args in (['top', path, '--limit', '-1'],
                     ['top', path, '--limit', 'many'],
                     ['top', path, '--group-by', 'module'],
                     ['diff', path, path, '--group-by', 'x'],
                     ['run', '-n', '0', '-c', 'pass'],
                     ['run', '--top', '-1', '-c', 'pass'],
                     ['top', path, '--no-such-option']):
            with self.subTest(args=args):
                self.assert_usage_error(self.tracemalloc(*args))

    def test_cumulative_traceback(self):
        path = self.dump(SNAPSHOT)
        for command in (['top', path], ['diff', path, path]):
            with self.subTest(command=command[0]):
                proc = self.tracemalloc(*command, '--cumulative',
                                        '--group-by', 'traceback')
                self.assert_usage_error(proc)
                self.assertIn('--cumulative', proc.stderr)

    def test_import_does_not_load_cli(self):
        proc = self.assert_ok(self.python('-c', (
            'import sys, tracemalloc; '
            'print("_tracemalloc_cli" in sys.modules, '
            '"argparse" in sys.modules)')))
        self.assertEqual(proc.stdout.split(), ['False', 'False'])


class BadFileTests(CommandLineTestCase):
    """Every command reads snapshots the same way: one line, status 2."""

    def check(self, path, message):
        good = self.dump(SNAPSHOT, 'good.out')
        for args in (['top', path], ['diff', good, path],
                     ['diff', path, good], ['flamegraph', path]):
            with self.subTest(command=args[0]):
                self.assert_file_error(self.tracemalloc(*args), message)
        self.assertFalse(os.path.exists(path + '.html'))

    def test_missing(self):
        self.check(self.path('missing.out'), 'cannot open')

    def test_directory(self):
        os.mkdir(self.path('dir'))
        self.check(self.path('dir'), 'cannot open')

    def test_empty(self):
        self.check(self.write('empty.out', ''), 'is empty')

    def test_truncated(self):
        with open(self.dump(SNAPSHOT), 'rb') as file:
            data = file.read()
        for cut in (1, len(data) // 2, len(data) - 1):
            with self.subTest(cut=cut):
                path = self.path('truncated.out')
                with open(path, 'wb') as file:
                    file.write(data[:cut])
                self.check(path, 'is truncated')

    def test_text_file(self):
        self.check(self.write('text.out', 'hello world\n' * 10),
                   'is not a tracemalloc snapshot')

    def test_other_pickle(self):
        path = self.path('list.out')
        with open(path, 'wb') as file:
            pickle.dump([1, 2, 3], file)
        self.check(path, 'is not a tracemalloc snapshot')

    def test_pickle_of_other_class_is_not_loaded(self):
        # Loading must not import or call anything a snapshot does not
        # name: here, a call to os.mkdir.
        marker = self.path('created')
        path = self.path('evil.out')
        with open(path, 'wb') as file:
            file.write(b'cos\nmkdir\n(' + pickle.dumps(marker, 0)[:-1]
                       + b'tR.')
        self.check(path, 'is not a tracemalloc snapshot')
        self.assertFalse(os.path.exists(marker))

    def test_malformed_traces(self):
        snapshot = tracemalloc.Snapshot([(0, 'size', (), 1)], 1)
        self.check(self.dump(snapshot, 'bad.out'),
                   'is not a tracemalloc snapshot')

    def big_snapshot(self):
        traces = [(1000 + i, [(f'file{i % 500}.py', i)])
                  for i in range(150_000)]
        path = self.dump(snapshot_of(*traces))
        self.assertGreater(os.path.getsize(path), 4 * 1024 * 1024)
        return path

    def test_no_progress_when_not_a_terminal(self):
        # stderr is a pipe here: a big file loads without a progress line.
        proc = self.assert_ok(self.tracemalloc('top', self.big_snapshot()))
        self.assertEqual(proc.stderr, '')

    @unittest.skipUnless(hasattr(os, 'openpty'), 'needs os.openpty()')
    def test_progress_on_a_terminal(self):
        path = self.big_snapshot()
        master, slave = os.openpty()
        with subprocess.Popen(
                [sys.executable, '-m', 'tracemalloc', 'top', path],
                cwd=self.dir, stdout=subprocess.DEVNULL, stderr=slave) as proc:
            os.close(slave)
            # Read while it runs: the terminal's buffer is small.
            shown = b''
            try:
                while chunk := os.read(master, 4096):
                    shown += chunk
            except OSError:
                pass   # EIO once the other side is closed, on Linux
            finally:
                os.close(master)
        self.assertEqual(proc.returncode, 0)
        self.assertIn(b'Loading ', shown)
        self.assertIn(b'100%', shown)
        # The line is cleared afterwards.
        self.assertTrue(shown.endswith(b'\r'), shown[-80:])


class TopTests(CommandLineTestCase):

    def top(self, *args, snapshot=SNAPSHOT):
        return self.assert_ok(self.tracemalloc('top', self.dump(snapshot),
                                               *args)).stdout

    def test_biggest_first(self):
        out = self.top()
        self.assertEqual(self.rows(out), [
            ['1', '30.0', 'MiB', '1', '30.0', 'MiB', 'big.py:7'],
            ['2', '4096', 'B', '2', '2048', 'B', 'small.py:3'],
            ['3', '100', 'B', '1', '100', 'B', 'small.py:4'],
        ])
        self.assertIn('30.0 MiB in 4 blocks', out)

    def test_limit(self):
        out = self.top('--limit', '1')
        self.assertEqual([row[-1] for row in self.rows(out)], ['big.py:7'])
        self.assertIn('2 other lines: 4196 B in 3 blocks', out)

    def test_limit_zero_shows_all(self):
        traces = [(i + 1, [(f'f{i}.py', 1)]) for i in range(20)]
        out = self.top('--limit', '0', snapshot=snapshot_of(*traces))
        self.assertEqual(len(self.rows(out)), 20)

    def test_group_by_filename(self):
        out = self.top('--group-by', 'filename')
        self.assertEqual([(row[1], row[-1]) for row in self.rows(out)],
                         [('30.0', 'big.py'), ('4196', 'small.py')])

    def test_group_by_traceback(self):
        lines = self.top('--group-by', 'traceback').splitlines()
        index = next(i for i, line in enumerate(lines)
                     if line.endswith(' small.py:3'))
        # The callers follow, most recent first, in the location column.
        self.assertEqual(lines[index + 1].strip(), 'main.py:2')
        self.assertEqual(lines[index + 1].index('main.py'),
                         lines[index].index('small.py'))

    def test_cumulative(self):
        out = self.top('--cumulative')
        sizes = {row[-1]: ' '.join(row[1:3]) for row in self.rows(out)}
        self.assertEqual(sizes['main.py:2'], '4196 B')
        self.assertEqual(sizes['main.py:1'], '30.0 MiB')

    def test_include(self):
        out = self.top('--include', 'small*')
        self.assertEqual([row[-1] for row in self.rows(out)],
                         ['small.py:3', 'small.py:4'])

    def test_exclude(self):
        out = self.top('--exclude', 'small*')
        self.assertEqual([row[-1] for row in self.rows(out)], ['big.py:7'])

    def test_json(self):
        data = json.loads(self.top('--json', '--group-by', 'traceback'))
        self.assertEqual(data['total_size'], BIG + 4196)
        self.assertEqual(data['total_count'], 4)
        expected = [
            {'size': stat.size, 'count': stat.count,
             'traceback': [{'filename': frame.filename,
                            'lineno': frame.lineno}
                           for frame in stat.traceback]}
            for stat in SNAPSHOT.statistics('traceback')]
        self.assertEqual(data['statistics'], expected)

    def test_long_path_fits_80_columns(self):
        subdir = self.path('a-directory-with-a-long-name-' * 3)
        os.mkdir(subdir)
        path = self.dump(SNAPSHOT, os.path.join(subdir, 'snapshot.out'))
        out = self.assert_ok(self.tracemalloc('top', path)).stdout
        self.assert_fits(out)
        self.assertIn('snapshot.out:', out)

    def test_fits_80_columns(self):
        long_name = '/' + '/'.join(['directory'] * 12) + '/deep.py'
        snapshot = snapshot_of((123456789, [(long_name, 12345),
                                            (long_name, 2)]))
        for group_by in ('lineno', 'filename', 'traceback'):
            with self.subTest(group_by=group_by):
                out = self.top('--group-by', group_by, snapshot=snapshot)
                self.assert_fits(out)
                self.assertIn('deep.py', out)

    def test_snapshot_of_real_tracing(self):
        # A file written by Snapshot.dump() after real tracing.
        if not tracemalloc.is_tracing():
            tracemalloc.start(3)
            self.addCleanup(tracemalloc.stop)
        data = [bytearray(4096) for _ in range(100)]
        snapshot = tracemalloc.take_snapshot()
        del data
        out = self.top(snapshot=snapshot)
        count = len(snapshot.traces)
        self.assertIn(f'in {count:,} blocks', out)
        self.assertIn(__file__.rsplit(os.sep, 1)[-1], out)

    def test_old_pickle_protocol(self):
        path = self.path('protocol0.out')
        with open(path, 'wb') as file:
            pickle.dump(SNAPSHOT, file, protocol=0)
        out = self.assert_ok(self.tracemalloc('top', path)).stdout
        self.assertEqual(self.rows(out)[0][-1], 'big.py:7')


class DiffTests(CommandLineTestCase):

    OLD = snapshot_of(
        (50_000, [('shrink.py', 1)]),
        (1000, [('same.py', 1)]),
    )
    NEW = snapshot_of(
        (10_240, [('grow.py', 1)]),
        (1000, [('same.py', 1)]),
        (512, [('new.py', 2)]),
    )

    def diff(self, *args):
        old = self.dump(self.OLD, 'old.out')
        new = self.dump(self.NEW, 'new.out')
        return self.assert_ok(self.tracemalloc('diff', old, new, *args))

    def test_biggest_growth_first(self):
        out = self.diff().stdout
        self.assertEqual([row[-1] for row in self.rows(out)],
                         ['grow.py:1', 'new.py:2', 'shrink.py:1'])
        self.assertIn('+10.0 KiB', out)
        self.assertIn('-48.8 KiB', out)
        self.assertNotIn('same.py', out)

    def test_totals(self):
        out = self.diff().stdout
        self.assertIn('Old: 49.8 KiB in 2 blocks', out)
        self.assertIn('New: 11.5 KiB in 3 blocks (-38.3 KiB, +1 blocks)',
                      out)

    def test_limit(self):
        out = self.diff('--limit', '1').stdout
        self.assertEqual([row[-1] for row in self.rows(out)], ['grow.py:1'])

    def test_same_snapshot(self):
        path = self.dump(SNAPSHOT)
        out = self.assert_ok(self.tracemalloc('diff', path, path)).stdout
        self.assertIn('No difference.', out)

    def test_json(self):
        data = json.loads(self.diff('--json').stdout)
        self.assertEqual((data['old_total_size'], data['new_total_size']),
                         (51_000, 11_752))
        stats = [(s['traceback'][0]['filename'], s['size_diff'],
                  s['count_diff']) for s in data['statistics']]
        self.assertEqual(stats, [('grow.py', 10_240, 1), ('new.py', 512, 1),
                                 ('same.py', 0, 0),
                                 ('shrink.py', -50_000, -1)])

    def test_fits_80_columns(self):
        self.assert_fits(self.diff('--group-by', 'traceback').stdout)

    def test_long_paths_fit_80_columns(self):
        subdir = self.path('a-directory-with-a-long-name-' * 3)
        os.mkdir(subdir)
        old = self.dump(self.OLD, os.path.join(subdir, 'old.out'))
        new = self.dump(self.NEW, os.path.join(subdir, 'new.out'))
        out = self.assert_ok(self.tracemalloc('diff', old, new)).stdout
        self.assert_fits(out)
        self.assertIn('new.out:', out)


class _HTMLChecker(html.parser.HTMLParser):
    """Check that tags are balanced; collect attributes, scripts, styles."""

    VOID = {'meta', 'input', 'br', 'img', 'link', 'hr', 'source', 'wbr'}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack = []
        self.errors = []
        self.attrs = []
        self.blocks = []        # [(tag, attrs, text)] of script and style
        self.has_doctype = False

    def handle_decl(self, decl):
        self.has_doctype = decl.lower() == 'doctype html'

    def handle_starttag(self, tag, attrs):
        self.attrs.append((tag, dict(attrs)))
        if tag in ('script', 'style'):
            self.blocks.append((tag, dict(attrs), []))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.attrs.append((tag, dict(attrs)))

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f'unexpected </{tag}> in {self.stack}')
        else:
            self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] in ('script', 'style'):
            self.blocks[-1][2].append(data)


class FlamegraphTests(CommandLineTestCase):

    def flamegraph(self, snapshot=SNAPSHOT, *args):
        path = self.dump(snapshot)
        proc = self.assert_ok(self.tracemalloc('flamegraph', path, *args))
        return path, proc

    def page(self, snapshot=SNAPSHOT):
        path, _proc = self.flamegraph(snapshot)
        with open(path + '.html', encoding='utf-8') as file:
            return file.read()

    def parse(self, page):
        checker = _HTMLChecker()
        checker.feed(page)
        checker.close()
        return checker

    def data(self, page):
        blocks = [block for block in self.parse(page).blocks
                  if block[1].get('id') == 'tracemalloc-data']
        self.assertEqual(len(blocks), 1)
        tag, attrs, text = blocks[0]
        self.assertEqual(attrs['type'], 'application/json')
        return json.loads(''.join(text))

    def stacks_of_data(self, data):
        """{frames oldest first: [self size, self count]} of the tree."""
        stacks = {}
        todo = [((), data['root'])]
        while todo:
            path, node = todo.pop()
            file, lineno, size, count, *kids = node
            if file >= 0:
                path += ((data['files'][file], lineno),)
            elif file != -1:
                path += ((file, lineno),)
            kids = kids[0] if kids else []
            own = size - sum(kid[2] for kid in kids)
            own_count = count - sum(kid[3] for kid in kids)
            self.assertGreaterEqual(own, 0)
            if own or own_count:
                stacks[path] = [own, own_count]
            todo.extend((path, kid) for kid in kids)
        return stacks

    def test_default_output(self):
        path, proc = self.flamegraph()
        self.assertTrue(os.path.exists(path + '.html'))
        self.assertIn(path + '.html', proc.stdout)

    def test_output_option(self):
        out = self.path('graph.html')
        self.flamegraph(SNAPSHOT, '-o', out)
        self.assertTrue(os.path.exists(out))

    def test_well_formed(self):
        page = self.page()
        self.assertTrue(page.startswith('<!DOCTYPE html>'))
        checker = self.parse(page)
        self.assertTrue(checker.has_doctype)
        self.assertEqual(checker.errors, [])
        self.assertEqual(checker.stack, [])
        self.assertEqual([tag for tag, _ in checker.attrs][:1], ['html'])

    def test_self_contained(self):
        page = self.page()
        checker = self.parse(page)
        self.assertNotIn('http://', page)
        self.assertNotIn('https://', page)
        for tag, attrs in checker.attrs:
            for name in ('src', 'href', 'srcset', 'action', 'data'):
                self.assertNotIn(name, attrs, f'<{tag} {name}=...>')
            self.assertNotIn(tag, ('link', 'iframe', 'object', 'embed',
                                   'img'))
        for tag, attrs, text in checker.blocks:
            text = ''.join(text)
            self.assertNotIn('url(', text)
            self.assertNotIn('@import', text)
            self.assertNotIn('fetch(', text)
            self.assertNotIn('XMLHttpRequest', text)
        scripts = [block for block in checker.blocks if block[0] == 'script']
        # The data, and the code inline.
        self.assertEqual(len(scripts), 2)

    def test_data_round_trips(self):
        data = self.data(self.page())
        self.assertEqual(data['total_size'], BIG + 4196)
        self.assertEqual(data['total_count'], 4)
        self.assertEqual(data['root'][2:4], [BIG + 4196, 4])
        self.assertEqual(data['traceback_limit'], 5)
        self.assertEqual(self.stacks_of_data(data), stacks_of(SNAPSHOT))

    def test_children_biggest_first(self):
        root = self.data(self.page())['root']
        sizes = [kid[2] for kid in root[4]]
        self.assertEqual(sizes, sorted(sizes, reverse=True))

    def test_truncated_tracebacks_grouped(self):
        snapshot = snapshot_of((10, [('a.py', 1)], 30),
                               (20, [('a.py', 1)]))
        data = self.data(self.page(snapshot))
        stacks = self.stacks_of_data(data)
        self.assertEqual(stacks, {(('a.py', 1),): [20, 1],
                                  ((-2, 0), ('a.py', 1)): [10, 1]})

    def test_file_names_are_escaped(self):
        name = '</script><script>alert(1)</script><!--&amp;.py'
        snapshot = snapshot_of((100, [(name, 1)]))
        page = self.page(snapshot)
        self.assertNotIn('alert(1)</script>', page)
        checker = self.parse(page)
        self.assertEqual(checker.errors, [])
        self.assertEqual(self.data(page)['files'], [name])

    def test_filters(self):
        path = self.dump(SNAPSHOT)
        self.assert_ok(self.tracemalloc('flamegraph', path,
                                        '--exclude', 'big.py'))
        with open(path + '.html', encoding='utf-8') as file:
            data = self.data(file.read())
        self.assertEqual(data['total_size'], 4196)
        self.assertEqual(sorted(data['files']), ['main.py', 'small.py'])

    def test_many_traces(self):
        # Aggregation by traceback keeps the page small.
        frames = [[(f'mod{i % 50}.py', i % 7), ('main.py', i % 3)]
                  for i in range(1000)]
        traces = [(i % 100 + 1, frames[i % 1000]) for i in range(200_000)]
        snapshot = snapshot_of(*traces)
        page = self.page(snapshot)
        data = self.data(page)
        self.assertEqual(data['total_count'], 200_000)
        self.assertEqual(self.stacks_of_data(data), stacks_of(snapshot))
        self.assertLess(len(page), 100_000)


class RunTests(CommandLineTestCase):

    def run_cli(self, *args):
        return self.tracemalloc('run', *args)

    def load(self, name='tracemalloc.out'):
        return tracemalloc.Snapshot.load(self.path(name))

    def test_script(self):
        self.write('script.py', '''\
            data = [bytearray(1000) for _ in range(3000)]
            print('done')
            ''')
        proc = self.assert_ok(self.run_cli('script.py'))
        self.assertEqual(proc.stdout, 'done\n')
        self.assertIn(' at peak', proc.stderr)
        self.assertIn('tracemalloc.out', proc.stderr)
        self.assertEqual(self.rows(proc.stderr)[0][-1], 'script.py:1')
        stat = self.load().statistics('lineno')[0]
        self.assertGreaterEqual(stat.size, 3_000_000)
        self.assertEqual(stat.traceback[0].lineno, 1)

    def test_script_like_python(self):
        # The program sees what "python script.py ARGS" shows it.
        self.write('script.py', '''\
            import sys
            print(sys.argv)
            print(__name__, __file__, __spec__, type(__loader__).__name__)
            print(sys.path[0])
            print(sorted(globals()))
            ''')
        args = ['script.py', 'a', '-n', '3', '--top', '--']
        expected = self.assert_ok(self.python(*args))
        proc = self.assert_ok(self.run_cli(*args))
        self.assertEqual(proc.stdout, expected.stdout)

    def test_module_like_python(self):
        self.write('tm_cli_module.py', '''\
            import sys
            print(sys.argv[1:], __name__, __file__, sys.path[0])
            print(sorted(globals()))
            ''')
        args = ['-m', 'tm_cli_module', 'x', '-c', 'y']
        expected = self.assert_ok(self.python(*args))
        proc = self.assert_ok(self.run_cli(*args))
        self.assertEqual(proc.stdout, expected.stdout)

    def test_code_like_python(self):
        args = ['-c', 'import sys; print(sys.argv, repr(sys.path[0]), '
                'sorted(globals()))', 'z', '-m']
        expected = self.assert_ok(self.python(*args))
        proc = self.assert_ok(self.run_cli(*args))
        self.assertEqual(proc.stdout, expected.stdout)

    def test_uncaught_exception(self):
        self.write('fail.py', '''\
            def f():
                raise ValueError('boom')
            f()
            ''')
        code = 'def f():\n    raise ValueError("boom")\nf()'
        for args in (['fail.py'], ['-c', code]):
            with self.subTest(args=args):
                expected = self.python(*args)
                proc = self.run_cli(*args)
                self.assertEqual(expected.returncode, 1)
                self.assertEqual(proc.returncode, 1)
                # The same traceback, source lines included, with no frame
                # of the bootstrap, then the report: the snapshot is
                # written anyway.
                self.assertIn('raise ValueError', expected.stderr)
                self.assertTrue(proc.stderr.startswith(expected.stderr),
                                proc.stderr)
                self.assertTrue(os.path.exists(self.path('tracemalloc.out')))

    def test_syntax_error(self):
        for args in (['-c', '1 +'], ['bad.py']):
            with self.subTest(args=args):
                self.write('bad.py', 'x = (\n')
                expected = self.python(*args)
                proc = self.run_cli(*args)
                self.assertEqual(proc.returncode, 1)
                self.assertTrue(proc.stderr.startswith(expected.stderr),
                                proc.stderr)

    def test_exit_status(self):
        for code, status, stderr in (('sys.exit(7)', 7, ''),
                                     ('sys.exit("bye")', 1, 'bye\n'),
                                     ('sys.exit()', 0, ''),
                                     ('raise KeyError(1)', 1, 'Traceback')):
            with self.subTest(code=code):
                proc = self.run_cli('--top', '0', '-c', f'import sys; {code}')
                self.assertEqual(proc.returncode, status)
                self.assertTrue(proc.stderr.startswith(stderr), proc.stderr)

    def test_missing_script(self):
        proc = self.run_cli('missing.py')
        self.assertEqual(proc.returncode, 2)
        self.assertIn("can't open file", proc.stderr)
        self.assertFalse(os.path.exists(self.path('tracemalloc.out')))

    def test_missing_module(self):
        proc = self.run_cli('-m', 'tm_cli_no_such_module')
        self.assertEqual(proc.returncode, 1)
        self.assertIn('No module named tm_cli_no_such_module', proc.stderr)

    def test_tracing_as_x_option(self):
        proc = self.assert_ok(self.run_cli('-n', '4', '-c', (
            'import tracemalloc; '
            'print(tracemalloc.is_tracing(), '
            'tracemalloc.get_traceback_limit())')))
        self.assertEqual(proc.stdout, 'True 4\n')
        self.assertEqual(self.load().traceback_limit, 4)

    def write_nested(self):
        # g() allocates at line 2, called from f() at line 4, called from
        # the module at line 5; the module allocates at line 6.
        return self.write('script.py', '''\
            def g():
                return [bytearray(1000) for _ in range(100)]
            def f():
                return g()
            data = f()
            more = bytearray(5000)
            ''')

    def stacks(self):
        return {(frames, total)
                for _, _, frames, total in self.load().traces._traces}

    def test_no_bootstrap_frames(self):
        # The tracebacks are those of "python -X tracemalloc=4 script.py".
        script = self.write_nested()
        self.assert_ok(self.run_cli('-n', '4', '--top', '0', 'script.py'))
        stacks = self.stacks()
        self.assertIn((((script, 2), (script, 4), (script, 5)), 3), stacks)
        self.assertIn((((script, 6),), 1), stacks)
        for frames, total in stacks:
            self.assertLessEqual(len(frames), 4)
            if total == len(frames):
                self.assertNotEqual(frames[-1][0], '<string>', frames)

    def test_no_bootstrap_frames_when_truncated(self):
        script = self.write_nested()
        self.assert_ok(self.run_cli('-n', '2', '--top', '0', 'script.py'))
        frames = {frames for frames, total in self.stacks()}
        self.assertIn(((script, 2), (script, 4)), frames)

    def test_output_option_and_chdir(self):
        os.mkdir(self.path('sub'))
        proc = self.assert_ok(self.run_cli(
            '-o', 'out.snapshot', '-c', 'import os; os.chdir("sub")'))
        self.assertTrue(os.path.exists(self.path('out.snapshot')))
        self.assertFalse(os.path.exists(self.path('sub/out.snapshot')))
        self.assertIn('out.snapshot', proc.stderr)

    def test_unwritable_output(self):
        proc = self.run_cli('-o', self.path('no/such/dir/x.out'),
                            '-c', 'print("ran")')
        self.assert_file_error(proc, 'cannot write')

    def test_top_zero_and_group_by(self):
        proc = self.assert_ok(self.run_cli('--top', '0', '-c', 'pass'))
        self.assertEqual(self.rows(proc.stderr), [])
        proc = self.assert_ok(self.run_cli('--top', '2', '-g', 'filename',
                                           '-c', 'pass'))
        self.assertEqual(len(self.rows(proc.stderr)), 2)
        self.assertIn('Top 2 files', proc.stderr)
        self.assert_fits(proc.stderr)

    def test_program_that_stops_tracing(self):
        proc = self.assert_ok(self.run_cli(
            '-c', 'import tracemalloc; tracemalloc.stop()'))
        self.assertIn('stopped tracing', proc.stderr)
        self.assertEqual(len(self.load().traces), 0)

    def test_stale_leftovers_removed(self):
        stale = self.path('tracemalloc.out.leftovers.99999')
        self.write('tracemalloc.out.leftovers.99999', '')
        self.assert_ok(self.run_cli('--top', '0', '-c', 'pass'))
        self.assertFalse(os.path.exists(stale))

    def test_subinterpreters(self):
        # Every interpreter traces, as with -X tracemalloc.
        self.write('interps.py', '''\
            import os, _interpreters
            interp = _interpreters.create()
            excinfo = _interpreters.exec(interp, (
                "import os, tracemalloc, _testinternalcapi\\n"
                "data = [bytearray(500) for _ in range(200)]\\n"
                "_testinternalcapi.tracemalloc_raw_malloc(12345)\\n"
                "os.write(1, ('sub %s %s\\\\n' % (tracemalloc.is_tracing(),"
                " tracemalloc.get_traceback_limit())).encode())\\n"))
            assert excinfo is None, excinfo
            _interpreters.destroy(interp)
            print('main done', flush=True)
            ''')
        proc = self.assert_ok(self.run_cli('-n', '6', 'interps.py'))
        self.assertEqual(proc.stdout, 'sub True 6\nmain done\n')
        self.assertEqual(self.load().traceback_limit, 6)
        leftovers = [name for name in os.listdir(self.dir)
                     if name.startswith('tracemalloc.out.leftovers.')]
        # the leftovers: the block the subinterpreter never freed
        self.assertEqual(len(leftovers), 1)
        snapshot = tracemalloc.Snapshot.load(self.path(leftovers[0]))
        self.assertIn(12345, [trace.size for trace in snapshot.traces])
        self.assertIn(leftovers[0], proc.stderr)


if __name__ == '__main__':
    unittest.main()
