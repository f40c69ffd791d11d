#!/usr/bin/env python3
"""Benchmark the per-interpreter tracemalloc fork against its upstream base.

Usage (what `make bench` runs; `make bench-ft` runs the free-threaded
builds ft-release and upstream-ft-release with --ft, into build/bench-ft):

    python3 Tools/tracemalloc/bench.py --fork build/release/python \\
        --upstream build/upstream/python --out build/bench

The driver runs under any Python 3.11+ and only launches the interpreters
under test as child processes (this same file, run with --child), so the
two builds are measured by identical code.  It prints a table and writes
OUT/results.json and OUT/results.md.

What is measured (each figure is the median over repetitions; "spread" is
the median absolute deviation of the same samples).  The workloads are
small standard-library programs (WORKLOADS_SRC), each about 0.1-0.15 s
untraced on a release build, each returning a checksum that must not
change when traced:
%s

  untraced    fork vs upstream with tracemalloc off, per workload: one
              child per interpreter, both alive, pinned to the same CPU, run
              the workload in turn, back to back, the order flipping every
              pair (ABBA...), with fresh children every three pairs (each
              process's address space is laid out anew, which moves its
              times by a few percent); ratio = median of the pairs' fork
              time / upstream time.
  overhead    traced time / untraced time, per workload, at 1 and 25 frames:
              one child per (interpreter, frames) alternates untraced and
              traced runs back to back (tracemalloc.start(n) ... stop()),
              the order flipping every pair (upstream: at most 3 pairs, it
              is slow at 25 frames); median of the pair ratios, and the
              geometric mean over the workloads.
  memory      1M live small str objects (plus the list holding them):
              get_tracemalloc_memory() growth / 1M, and peak-RSS growth
              (VmHWM) of a traced child minus that of an untraced child of
              the same round, / 1M.  Then heap shapes, each in a fresh
              child: get_tracemalloc_memory() growth / number of traces
              (1 frame) for
                fragmented  2M small str allocated untraced, every 100th
                            freed, then 20k new ones traced fill the holes;
                sparse      1.28M small str traced, 1 in 64 kept;
                mixed       20k bytes objects of 300-4000 B;
                imports     importing 24 stdlib modules.
  snapshot    take_snapshot() with those 1M traces live; ratio fork/upstream.
  isolation   what tracing in one interpreter costs the others.  Two
              isolated subinterpreters in two threads build lists of small
              dicts while (a) nobody traces, (b) only main traces (1
              frame), (c) each subinterpreter traces itself; wall time of
              (b) and (c) / (a) of the same round.  Then one subinterpreter
              builds lists of 2000 strings, one iteration after another,
              while main, tracing 2M blocks, takes snapshots: the worst
              iteration, against the worst with main idle.  Last, freeing
              a snapshot of 1M traces with two tracing subinterpreters
              alive / with none.
  scaling     N isolated subinterpreters (own GIL), one thread each, all
              running the same workload with tracemalloc started inside,
              for N = 1 .. max(2, nproc), each workload with every N back
              to back (as threads below): speedup vs N = 1 per workload
              and its geometric mean; throughput = total work / wall
              time of the mix.  Also untraced, as a reference for
              what the machine allows.  Upstream cannot import tracemalloc in
              an isolated subinterpreter: reported as n/a.  email and sqlite
              are left out (they import datetime, which crashes upstream
              3.13.5 when two isolated subinterpreters end: gh-136423).
  threads     (--ft only) 1 and 2 threads of the main interpreter, each
              running the workloads (scale 1/4), tracing with 1 frame,
              then not tracing as a reference: each workload with 1 thread
              and with 2 back to back, the order flipping every
              repetition.  Speedup of 2 threads vs 1 per workload (the
              machine's speed drifts by far more than that over seconds,
              but not between two runs of a workload), and its geometric
              mean; the suite's throughput (wall time) and the process
              CPU time / wall time of 2 threads.  Each thread checks
              its checksums against an untraced single-threaded run.  The
              cyclic GC is off while timed: in 3.13 free-threaded, each
              collection stops all threads and scans the whole heap, so
              with it on these workloads do not scale even untraced.

By default all sections but threads run.  --ft is for the free-threaded
builds: only overhead at 1 frame and threads, with their targets
(overhead <= 2x per workload and in geomean, threads fork >= 1.7x).

Single-threaded timings use process CPU time (time.process_time), which is
robust against other load on the machine; isolation, scaling and threads
use wall time, with one child per repetition, the builds taking turns to
go first (a child that runs after the other build's can be ahead).  The
children of the single-threaded sections (untraced, overhead, memory,
snapshot) are pinned to one CPU, the same for both builds: the
fastest of a short calibration by default (--cpu).  The CPUs of a virtual
machine can differ in speed for long stretches (a busy neighbour on the
same physical core), and a child that migrates between two of them in
the middle of a pair skews its ratio.  The load average at the start and
the end is printed.  Child processes run with PYTHONHASHSEED=0 and without
user site-packages.

The report lists the sections in the order above, but they run in
another: untraced, overhead, scaling, threads, isolation, then memory and
snapshot.  After a process has freed gigabytes, threads that fault pages
in scale worse on this kind of virtual machine for a minute or so, untraced
too; the sections that scale threads run first, and their traced and
untraced children take turns.

Targets missed are reported as such; the exit status is 0 whenever all
measurements ran, 1 if a child process crashed or a measurement failed.
"""

import argparse
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

# Workloads, run by the children and by the subinterpreters of the scaling
# test (hence a string: it is exec'd in each).  Each takes a scale factor
# (1.0 ~ 0.1-0.15 s untraced on a release build) and returns a checksum.
WORKLOADS_SRC = r'''
import json, random, re
import asyncio, ast, copy, dataclasses, heapq, io, itertools, logging
import operator, pickle
import xml.etree.ElementTree as ET
from collections import Counter, deque
from decimal import Decimal, localcontext, ROUND_HALF_EVEN
from types import SimpleNamespace
# email and sqlite3 import datetime, which crashes upstream 3.13.5 when two
# isolated subinterpreters end (gh-136423): their workloads import them
# inside and are not run in subinterpreters (NOT_IN_SUBINTERPRETERS).


def wl_churn(scale):
    """dict/list/str churn: build, join, split and filter small containers."""
    total = 0
    for r in range(int(1000 * scale)):
        d = {}
        for i in range(300):
            k = 'key%d_%d' % (r, i)
            d[k] = [k, str(i), k.upper()]
        joined = ','.join([v[1] + v[2] for v in d.values()])
        parts = joined.split(',')
        inv = {p: n for n, p in enumerate(parts) if n % 3}
        total += len(parts) + len(inv) + len(joined)
    return total


def wl_json(scale):
    """JSON round trip of a generated list of records."""
    rng = random.Random(2)
    doc = [{'id': i, 'name': 'user%d' % i, 'email': 'user%d@example.org' % i,
            'tags': ['t%d' % rng.randrange(20) for _ in range(3)],
            'score': rng.random(), 'active': i % 3 == 0,
            'address': {'city': 'c%d' % (i % 50), 'zip': '%05d' % i}}
           for i in range(int(3600 * scale))]
    total = 0
    for _ in range(12):
        text = json.dumps(doc)
        back = json.loads(text)
        total += len(text) + len(back[-1]['tags'])
    return total


class Vec:
    __slots__ = ('x', 'y')

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __add__(self, other):
        return Vec(self.x + other.x, self.y + other.y)

    def scaled(self, k):
        return Vec(self.x * k, self.y * k)


class Node:
    def __init__(self, key, value):
        self.key = key
        self.value = value
        self.left = None
        self.right = None


class Particle:
    def __init__(self, pos, vel, tag):
        self.pos = pos
        self.vel = vel
        self.tag = tag

    def step(self):
        return Particle(self.pos + self.vel, self.vel.scaled(0.99), self.tag)


def wl_objects(scale):
    """Small class instances: a binary search tree and particles stepped."""
    rng = random.Random(3)
    root = None
    for i in range(int(20000 * scale)):
        key = rng.randrange(1 << 30)
        node = Node(key, Vec(i, -i))
        if root is None:
            root = node
            continue
        cur = root
        while True:
            if key < cur.key:
                if cur.left is None:
                    cur.left = node
                    break
                cur = cur.left
            else:
                if cur.right is None:
                    cur.right = node
                    break
                cur = cur.right
    particles = [Particle(Vec(i, 0), Vec(1, i), 'p%d' % i) for i in range(2000)]
    for _ in range(int(60 * scale)):
        particles = [p.step() for p in particles]
    acc = Vec(0, 0)
    stack = [root]
    while stack:
        node = stack.pop()
        acc = acc + node.value.scaled(2)
        if node.left is not None:
            stack.append(node.left)
        if node.right is not None:
            stack.append(node.right)
    for p in particles:
        acc = acc + p.pos
    return int(acc.x - acc.y)


_TOKEN = re.compile(r'\s*(?:(\d+)|([A-Za-z_]\w*)|(.))')


def _gen_expr(rng, depth):
    if depth <= 0 or rng.random() < 0.3:
        return str(rng.randrange(1, 100)) if rng.random() < 0.7 else rng.choice('abcxyz')
    op = rng.choice('+-*')
    return '(%s %s %s)' % (_gen_expr(rng, depth - 1), op, _gen_expr(rng, depth - 1))


class Token:
    __slots__ = ('kind', 'text', 'pos')

    def __init__(self, kind, text, pos):
        self.kind = kind
        self.text = text
        self.pos = pos


def _tokenize(text):
    tokens = []
    for m in _TOKEN.finditer(text):
        num, name, op = m.groups()
        if num:
            tokens.append(Token('num', num, m.start(1)))
        elif name:
            tokens.append(Token('name', name, m.start(2)))
        elif op:
            tokens.append(Token('op', op, m.start(3)))
    tokens.append(Token('end', '', len(text)))
    return tokens


class _Parser:
    def __init__(self, tokens):
        self.tokens = tokens
        self.pos = 0

    def next(self):
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expr(self):
        node = self.term()
        while self.tokens[self.pos].text in ('+', '-'):
            node = {'op': self.next().text, 'args': [node, self.term()]}
        return node

    def term(self):
        node = self.atom()
        while self.tokens[self.pos].text == '*':
            self.next()
            node = {'op': '*', 'args': [node, self.atom()]}
        return node

    def atom(self):
        tok = self.next()
        if tok.text == '(':
            node = self.expr()
            self.next()
            return node
        return {'op': tok.kind, 'value': tok.text}


def _unparse(node):
    if 'value' in node:
        return node['value']
    a, b = node['args']
    return '(' + _unparse(a) + ' ' + node['op'] + ' ' + _unparse(b) + ')'


def wl_parse(scale):
    """Tokenize and parse generated arithmetic text, then print it back."""
    rng = random.Random(4)
    lines = [_gen_expr(rng, 7) for _ in range(int(2400 * scale))]
    total = 0
    for line in lines:
        text = _unparse(_Parser(_tokenize(line)).expr())
        total += len(text) + (text == line)
    return total


_LOG = re.compile(r'(\S+) (\w+) \[(\w+)\] (\w+) (\S+) (\d{3}) (\d+)ms (\d+)b')


def wl_logs(scale):
    """A small program: generate access logs, parse, aggregate, report."""
    rng = random.Random(5)
    routes = ['/api/users/%d', '/api/orders/%d/items', '/static/app.js',
              '/api/search?q=%d', '/health', '/api/users/%d/avatar']
    levels = ['INFO'] * 8 + ['WARN', 'ERROR']
    lines = []
    for i in range(int(28000 * scale)):
        route = rng.choice(routes)
        path = route % rng.randrange(10000) if '%d' in route else route
        status = rng.choice((200, 200, 200, 200, 304, 404, 500))
        lines.append('2026-11-21T12:%02d:%02d.%03d %s [web%d] %s %s %d %dms %db' % (
            i // 3600 % 60, i // 60 % 60, i % 1000, rng.choice(levels),
            rng.randrange(8), rng.choice(('GET', 'GET', 'POST')), path,
            status, rng.randrange(1, 900), rng.randrange(100, 100000)))
    text = '\n'.join(lines)

    stats = {}
    for line in text.splitlines():
        m = _LOG.match(line)
        if m is None:
            continue
        ts, level, host, method, path, status, ms, size = m.groups()
        path = path.split('?', 1)[0]
        key = (method, '/'.join(':id' if p.isdigit() else p
                                for p in path.split('/')))
        entry = stats.get(key)
        if entry is None:
            entry = stats[key] = {'count': 0, 'bytes': 0, 'ms': [],
                                  'status': {}, 'hosts': set()}
        entry['count'] += 1
        entry['bytes'] += int(size)
        entry['ms'].append(int(ms))
        entry['status'][status] = entry['status'].get(status, 0) + 1
        entry['hosts'].add(host)
    report = []
    for (method, route), e in sorted(stats.items(), key=lambda kv: -kv[1]['count']):
        ms = sorted(e['ms'])
        report.append('%-6s %-28s %6d %8.1fkB p50=%dms p99=%dms %s hosts=%d' % (
            method, route, e['count'], e['bytes'] / 1024, ms[len(ms) // 2],
            ms[len(ms) * 99 // 100],
            ' '.join('%s:%d' % kv for kv in sorted(e['status'].items())),
            len(e['hosts'])))
    return len('\n'.join(report))


def wl_asyncio(scale):
    """asyncio: producer/consumer tasks over queues, gathered."""
    async def producer(q, n, seed):
        for i in range(n):
            await q.put({'id': seed * 100000 + i,
                         'body': 'msg-%d-%d' % (seed, i)})
            if i % 16 == 0:
                await asyncio.sleep(0)
        await q.put(None)

    async def consumer(q, out):
        total = 0
        while True:
            item = await q.get()
            if item is None:
                break
            total += len(item['body']) + item['id'] % 7
            out.append(item['body'][-3:])
        return total

    async def fanout(k):
        await asyncio.sleep(0)
        return [k * j for j in range(10)]

    async def main(n):
        out = []
        queues = [asyncio.Queue(maxsize=64) for _ in range(8)]
        tasks = [asyncio.create_task(consumer(q, out)) for q in queues]
        await asyncio.gather(*(producer(q, n, s)
                               for s, q in enumerate(queues)))
        totals = await asyncio.gather(*tasks)
        small = await asyncio.gather(*(fanout(k) for k in range(n)))
        return sum(totals) + len(out) + sum(map(sum, small))

    return asyncio.run(main(int(5500 * scale)))


def wl_pickle(scale):
    """pickle round trips of nested records, several protocols."""
    docs = [{'i': i, 'name': 'item%d' % i,
             'tags': ['t%d' % (i % 13), 't%d' % (i % 5)],
             'pos': (i, -i, i * 0.25),
             'meta': {'k%d' % (i % 9): str(i), 'ok': i % 2 == 0}}
            for i in range(int(4500 * scale))]
    recs = [SimpleNamespace(id=i, name='rec%d' % i,
                            when=complex(i % 12, i % 28),
                            tags={'a%d' % (i % 7), 'b%d' % (i % 11)},
                            raw=b'%d' % i,
                            values=[i * 0.5, i * 1.5, -i])
            for i in range(int(1800 * scale))]
    total = 0
    for proto in (2, 4, 5, 5, 5):
        blob = pickle.dumps(docs, protocol=proto)
        back = pickle.loads(blob)
        blob2 = pickle.dumps(recs, protocol=proto)
        back2 = pickle.loads(blob2)
        total += len(blob) + len(blob2) + (back == docs) + back2[-1].id
    return total


def wl_regex(scale):
    """re: compile generated patterns (the cache purged) and match text."""
    words = ['alpha', 'beta', 'gamma', 'delta', 'epsilon', 'zeta', 'eta',
             'theta', 'iota', 'kappa']
    text = ' '.join('%s%d=%d;' % (words[i % 10], i % 37, i * 7 % 1000)
                    for i in range(2000))
    total = 0
    for r in range(int(40 * scale)):
        re.purge()
        pats = [re.compile(r'(?P<w>%s)(?P<n>\d{1,2})=(?P<v>\d+);' % w)
                for w in words]
        pats.append(re.compile(r'\b(\w+?)(\d+)=(%d\d*)\b' % (r % 10)))
        pats.append(re.compile(r'(?i)(?:%s|%s)\d+' % (
            words[r % 10], words[(r + 3) % 10])))
        for p in pats:
            for m in p.finditer(text):
                total += len(m.group(0)) + len(m.groups())
        total += len(re.sub(r'\d+', lambda m: str(len(m.group())),
                            text[:4000]))
        total += len(re.split(r'[;=]', text[:8000]))
    return total


def wl_xml(scale):
    """xml.etree: build a document, serialize, parse, iterate, find."""
    n = int(4000 * scale)
    root = ET.Element('catalog', version='1')
    for i in range(n):
        item = ET.SubElement(root, 'item', id=str(i), kind='k%d' % (i % 5))
        ET.SubElement(item, 'name').text = 'Item %d' % i
        price = ET.SubElement(item, 'price', currency='EUR')
        price.text = '%d.%02d' % (i % 100, i % 97)
        tags = ET.SubElement(item, 'tags')
        for j in range(3):
            ET.SubElement(tags, 'tag').text = 't%d' % ((i + j) % 17)
    text = ET.tostring(root, encoding='unicode')
    total = len(text)
    for _ in range(3):
        doc = ET.fromstring(text)
        for item in doc.iter('item'):
            total += len(item.get('id')) + len(item.findtext('name'))
            total += sum(len(t.text) for t in item.iterfind('tags/tag'))
        total += len(doc.findall(".//item[@kind='k3']"))
    return total


def _gen_message(rng, i):
    lines = ['From: User %d <user%d@example.org>' % (i, i),
             'To: list%d@example.com' % (i % 10),
             'Subject: Re: report %d about %s' % (
                 i, rng.choice(('cpu', 'disk', 'net'))),
             'Date: Tue, 01 Dec 2026 12:%02d:%02d +0000' % (
                 i % 60, (i * 7) % 60),
             'Message-ID: <%d.%d@example.org>' % (i, rng.randrange(10 ** 6)),
             'MIME-Version: 1.0',
             'Content-Type: multipart/mixed; boundary="b%d"' % i, '',
             '--b%d' % i, 'Content-Type: text/plain; charset="utf-8"', '']
    lines += ['line %d of the body, value %d' % (j, rng.randrange(1000))
              for j in range(rng.randrange(5, 20))]
    lines += ['--b%d' % i, 'Content-Type: text/csv', '',
              '\n'.join('%d,%d,%d' % (j, j * i, j % 3) for j in range(8)),
              '--b%d--' % i, '']
    return '\n'.join(lines)


def wl_email(scale):
    """email.parser: parse generated multipart messages, walk the parts."""
    import email.parser, email.policy
    rng = random.Random(6)
    msgs = [_gen_message(rng, i) for i in range(int(125 * scale))]
    total = 0
    for policy in (email.policy.compat32, email.policy.default):
        parser = email.parser.Parser(policy=policy)
        for text in msgs:
            msg = parser.parsestr(text)
            total += len(str(msg['Subject'])) + len(str(msg['From']))
            for part in msg.walk():
                if not part.is_multipart():
                    total += (len(part.get_payload())
                              + len(part.get_content_type()))
    return total


def wl_decimal(scale):
    """decimal: loan schedules and sums with quantize, 28 and 50 digits."""
    total = Decimal(0)
    cent = Decimal('0.01')
    with localcontext() as ctx:
        for prec in (28, 50):
            ctx.prec = prec
            for k in range(int(900 * scale)):
                principal = Decimal(10000 + 137 * k)
                rate = Decimal(3 + k % 5) / Decimal(1200)
                months = 120
                pay = principal * rate / (1 - (1 + rate) ** -months)
                pay = pay.quantize(cent, rounding=ROUND_HALF_EVEN)
                bal = principal
                for _ in range(months):
                    interest = (bal * rate).quantize(cent)
                    bal = bal + interest - pay
                    total += interest
                total += bal.copy_abs()
                total += sum(Decimal(str(x)) / 7 for x in range(40)).sqrt()
    return str(total.quantize(cent))


@dataclasses.dataclass(order=True)
class _Point:
    x: int
    y: int
    label: str = ''


@dataclasses.dataclass
class _Shape:
    name: str
    points: list
    attrs: dict = dataclasses.field(default_factory=dict)


def wl_dataclasses(scale):
    """dataclasses: creation, asdict, replace, sorting, comparisons."""
    rng = random.Random(7)
    shapes = []
    for i in range(int(4800 * scale)):
        pts = [_Point(rng.randrange(100), rng.randrange(100), 'p%d' % j)
               for j in range(6)]
        shapes.append(_Shape('s%d' % i, pts, {'layer': i % 4}))
    total = 0
    for s in shapes:
        d = dataclasses.asdict(s)
        total += len(d['points']) + d['points'][0]['x']
        s.points.sort()
        moved = [dataclasses.replace(p, x=p.x + 1) for p in s.points]
        total += sum(m > p for m, p in zip(moved, s.points))
    shapes.sort(key=lambda s: (s.points[0], s.name))
    total += len(dataclasses.astuple(shapes[0])[1])
    return total + (shapes[0] == shapes[0])


def _gen_source(rng, n):
    out = []
    for i in range(n):
        out.append('def f%d(a, b=%d, *args, **kw):' % (i, rng.randrange(10)))
        out.append('    """Function %d."""' % i)
        out.append('    x = [a * %d + b for _ in range(%d) if _ %% 2]' % (
            rng.randrange(9), rng.randrange(5, 20)))
        out.append('    for k, v in kw.items():')
        out.append('        x.append((k, v, {"k": k, "n": len(args)}))')
        out.append('    if a > b:')
        out.append('        return sum(x[:3]) if x else None')
        out.append('    return [y for y in x if isinstance(y, int)]')
        out.append('')
        out.append('class C%d(object):' % i)
        out.append('    attr = %r' % ('c%d' % i))
        out.append('    def method(self, z):')
        out.append('        return f%d(z, z + 1, key=self.attr)' % i)
        out.append('')
    return '\n'.join(out)


def wl_ast(scale):
    """ast: parse generated source, walk and transform it, compile it."""
    rng = random.Random(8)
    src = _gen_source(rng, int(115 * scale))
    total = 0
    for _ in range(2):
        tree = ast.parse(src)
        names = Counter(type(node).__name__ for node in ast.walk(tree))
        total += names['Name'] + names['Call'] + len(names)
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, int):
                node.value += 1
        code = compile(tree, '<bench-ast>', 'exec')
        total += len(code.co_consts)
        total += len(ast.dump(tree.body[0]))
    return total


def wl_sqlite(scale):
    """sqlite3 in memory: inserts, an index, selects with group by."""
    import sqlite3
    rng = random.Random(9)
    n = int(36000 * scale)
    rows = [(i, 'cust%d' % rng.randrange(500),
             rng.choice(('a', 'b', 'c', 'd')),
             rng.randrange(1, 10000) / 100.0) for i in range(n)]
    con = sqlite3.connect(':memory:')
    try:
        con.execute('create table orders (id integer primary key, customer text,'
                    ' kind text, amount real)')
        con.executemany('insert into orders values (?, ?, ?, ?)', rows)
        con.execute('create index orders_customer on orders (customer)')
        total = 0
        for kind, count, amount in con.execute(
                'select kind, count(*), sum(amount) from orders group by kind'
                ' order by kind'):
            total += count + int(amount)
        for c in range(0, 500, 2):
            cur = con.execute('select id, amount from orders where customer = ?'
                              ' order by id', ('cust%d' % c,))
            total += sum(i for i, _ in cur.fetchall())
        for row in con.execute('select * from orders where amount > 50'
                               ' order by amount'):
            total += len(row[1])
        con.execute('update orders set amount = amount * 2 where kind = ?',
                    ('b',))
        total += int(con.execute('select sum(amount) from orders')
                     .fetchone()[0])
    finally:
        con.close()
    return total


def wl_logging(scale):
    """logging: a logger with a formatter writing to a StringIO handler."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(
        '%(levelname)-8s %(name)s %(funcName)s:%(lineno)d %(message)s'))
    log = logging.Logger('bench.logging', logging.DEBUG)
    log.addHandler(handler)
    child = logging.Logger('bench.logging.db', logging.INFO)
    child.addHandler(handler)
    for i in range(int(7500 * scale)):
        log.info('request %d from %s took %.1f ms', i, 'host%d' % (i % 17),
                 i % 97 / 3)
        if i % 3 == 0:
            child.debug('not emitted %d', i)
            child.warning('slow query %r on %s', 'select %d' % i,
                          {'table': i % 5})
        if i % 50 == 0:
            try:
                raise ValueError('bad value %d' % i)
            except ValueError:
                log.exception('failed item %d', i)
    handler.close()
    return len(stream.getvalue())


class _Leaf:
    def __init__(self, i):
        self.i = i
        self.data = {'n': i, 'sq': [i, i * i]}


def wl_deepcopy(scale):
    """copy.deepcopy of nested dicts, lists, tuples and instances."""
    tree = {'k%d' % i: {'list': [(j, 'v%d' % j, [j] * 3) for j in range(8)],
                        'leaf': _Leaf(i), 'set': frozenset(range(i % 5)),
                        'nested': {'a': [{'b': i}], 'c': (i, (i, [i]))}}
            for i in range(int(650 * scale))}
    total = 0
    for _ in range(4):
        c = copy.deepcopy(tree)
        total += len(c) + c['k0']['leaf'].data['sq'][1] + len(c['k1']['list'])
        shallow = [copy.copy(v) for v in c.values()]
        total += len(shallow)
    return total


def wl_pipeline(scale):
    """Generators and itertools: a lazy pipeline, groupby, merge, Counter."""
    n = int(38000 * scale)

    def records(seed):
        rng = random.Random(seed)
        for i in range(n):
            yield (rng.randrange(100), 'w%d' % rng.randrange(300), i)

    def window(it, size):
        buf = deque(maxlen=size)
        for x in it:
            buf.append(x)
            if len(buf) == size:
                yield tuple(buf)

    total = 0
    evens = (r for r in records(10) if r[0] % 2 == 0)
    keyed = sorted(itertools.islice(evens, n // 3), key=operator.itemgetter(1))
    for word, group in itertools.groupby(keyed, key=operator.itemgetter(1)):
        total += sum(1 for _ in group) * len(word)
    words = Counter(r[1] for r in records(11))
    total += sum(c for _, c in words.most_common(10))
    half = itertools.islice(records(13), n // 2)
    merged = heapq.merge(sorted(r[0] for r in records(12)),
                         sorted(r[0] for r in half))
    total += sum(itertools.accumulate(itertools.islice(merged, 0, None, 97)))
    windows = window((r[0] for r in records(14)), 4)
    for w in itertools.islice(windows, 0, None, 50):
        total += max(w) - min(w)
    pairs = itertools.zip_longest(range(0, n, 3), map(str, range(n // 4)),
                                  fillvalue='')
    total += sum(len(b) for _, b in pairs)
    return total


class _Account:
    def __init__(self, owner, balance):
        self.owner = owner
        self.balance = balance
        self.history = []

    def deposit(self, amount, when):
        self.balance += amount
        self.history.append(('dep', amount, when))

    def withdraw(self, amount, when):
        if amount > self.balance:
            self.history.append(('fail', amount, when))
            return False
        self.balance -= amount
        self.history.append(('wd', amount, when))
        return True

    @property
    def activity(self):
        return len(self.history)


class _Savings(_Account):
    rate = 3

    def accrue(self, when):
        self.deposit(self.balance * self.rate // 1000, when)


class _Checking(_Account):
    fee = 1

    def withdraw(self, amount, when):
        return super().withdraw(amount + self.fee, when)


class _Event:
    __slots__ = ('when', 'seq', 'kind', 'args')

    def __init__(self, when, seq, kind, args):
        self.when, self.seq, self.kind, self.args = when, seq, kind, args

    def __lt__(self, other):
        return (self.when, self.seq) < (other.when, other.seq)


class _Bank:
    def __init__(self, rng, n):
        self.rng = rng
        self.accounts = [
            (_Savings if i % 3 == 0 else _Checking)('o%d' % i, 1000)
            for i in range(n)]
        self.queue = []
        self.seq = 0
        self.failed = 0

    def schedule(self, when, kind, *args):
        self.seq += 1
        heapq.heappush(self.queue, _Event(when, self.seq, kind, args))

    def run(self, events):
        rng = self.rng
        for i in range(events):
            self.schedule(rng.randrange(1000), 'transfer',
                          rng.randrange(len(self.accounts)),
                          rng.randrange(len(self.accounts)),
                          rng.randrange(1, 300))
        while self.queue:
            ev = heapq.heappop(self.queue)
            if ev.kind == 'transfer':
                src, dst, amount = ev.args
                if self.accounts[src].withdraw(amount, ev.when):
                    self.accounts[dst].deposit(amount, ev.when)
                else:
                    self.failed += 1
                    if ev.when < 990:
                        self.schedule(ev.when + 10, 'accrue', src)
            elif isinstance(self.accounts[ev.args[0]], _Savings):
                self.accounts[ev.args[0]].accrue(ev.when)
        return (sum(a.balance for a in self.accounts) +
                sum(a.activity for a in self.accounts) + self.failed)


def wl_simulation(scale):
    """A class-heavy simulation: accounts, inheritance, an event queue."""
    return _Bank(random.Random(15), 300).run(int(21000 * scale))


# Every wl_<name> above, in the order of definition: the original five
# (churn, json, objects, parse, logs) first.
WORKLOADS = {name[3:]: func for name, func in list(globals().items())
             if name.startswith('wl_')}


def run_mix(names, scale, units, frames):
    """The unit of work of the scaling test, traced if frames > 0."""
    if frames:
        import tracemalloc
        tracemalloc.start(frames)
    try:
        for _ in range(units):
            for name in names:
                WORKLOADS[name](scale)
    finally:
        if frames:
            tracemalloc.stop()
'''

WORKLOAD_NAMES = tuple(re.findall(r'^def wl_(\w+)', WORKLOADS_SRC, re.M))
NOT_IN_SUBINTERPRETERS = ('email', 'sqlite')    # see WORKLOADS_SRC
SECTIONS = ('untraced', 'overhead', 'memory', 'snapshot', 'isolation',
            'scaling', 'threads')
DEFAULT_SECTIONS = SECTIONS[:-1]
FT_SECTIONS = ('overhead', 'threads')     # and FRAMES[:1]
FRAMES = (1, 25)
MEMORY_BLOCKS = 1_000_000

# Targets of the issues: row key -> (what is compared, operator, bound, unit).
TARGETS = {
    'overhead-1': ('fork', '<=', 1.5, 'x'),
    'overhead-1-geomean': ('fork', '<=', 1.35, 'x'),
    'overhead-25': ('fork', '<=', 2.0, 'x'),
    'overhead-25-geomean': ('fork', '<=', 1.6, 'x'),
    'tm-memory': ('fork', '<=', 24.0, ' B'),
    'tm-shape': ('fork', '<=', 24.0, ' B'),
    'rss': ('fork', '<=', 24.0, ' B'),
    'snapshot': ('ratio', '<=', 0.5, 'x'),
    'untraced': ('ratio', '<=', 1.02, 'x'),
    'scaling-2': ('fork', '>=', 1.7, 'x'),
    'others-main-traces': ('fork', '<=', 1.10, 'x'),
    'stall': ('fork', '<=', 50.0, ' ms'),
    'snapshot-free': ('fork', '<=', 1.10, 'x'),
}
# With --ft (the free-threaded builds), these replace the above.
FT_TARGETS = {
    'overhead-1': ('fork', '<=', 2.0, 'x'),
    'overhead-1-geomean': ('fork', '<=', 2.0, 'x'),
    'threads-2': ('fork', '>=', 1.7, 'x'),
}
NA = 'n/a'      # a cell that cannot be measured (as opposed to None: no cell)

RESULT_MARK = 'BENCH-RESULT '


# --- Child side: runs inside the interpreter under test --------------------

def load_workloads():
    ns = {'__name__': 'bench_workloads'}
    exec(compile(WORKLOADS_SRC, '<bench-workloads>', 'exec'), ns)
    return ns


def timed(func, *args):
    import gc
    gc.collect()
    t0 = time.process_time()
    result = func(*args)
    return time.process_time() - t0, result


def child_untraced(spec):
    """Warm the workloads up, say so, then run one untraced for each name
    read from stdin, writing its time and checksum, until end of file."""
    wl = load_workloads()['WORKLOADS']
    names, scale = spec['names'], spec['scale']
    for name in names:
        wl[name](scale * 0.25)                      # warm up
    print(RESULT_MARK + json.dumps({'ready': True}), flush=True)
    for line in sys.stdin:
        t, result = timed(wl[line.strip()], scale)
        print(RESULT_MARK + json.dumps({'time': t, 'result': result}),
              flush=True)
    return {'done': True}


def child_overhead(spec):
    """Back-to-back untraced/traced pairs; the order flips every pair."""
    import tracemalloc
    wl = load_workloads()['WORKLOADS']
    names, scale, frames = spec['names'], spec['scale'], spec['frames']

    def traced(func, *args):
        tracemalloc.start(frames)
        try:
            return timed(func, *args)
        finally:
            tracemalloc.stop()

    for name in names:                              # warm up
        wl[name](scale * 0.25)
        traced(wl[name], scale * 0.25)
    out = {name: {'untraced': [], 'traced': []} for name in names}
    for i in range(spec['pairs']):
        for name in names:
            if i % 2 == 0:
                t_off, r_off = timed(wl[name], scale)
                t_on, r_on = traced(wl[name], scale)
            else:
                t_on, r_on = traced(wl[name], scale)
                t_off, r_off = timed(wl[name], scale)
            if r_on != r_off:
                raise RuntimeError('%s: result differs when traced' % name)
            out[name]['untraced'].append(t_off)
            out[name]['traced'].append(t_on)
    return out


def read_status_kb(field):
    """VmRSS/VmHWM of this process in kB (ru_maxrss for VmHWM elsewhere)."""
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child_memory(spec):
    """Hold `n` small str objects, traced or not; time take_snapshot()."""
    import gc
    import tracemalloc
    n, traced = spec['n'], spec['traced']
    gc.collect()
    out = {'rss0_kb': read_status_kb('VmRSS')}
    if traced:
        tracemalloc.start(1)
        out['tm0'] = tracemalloc.get_tracemalloc_memory()
    data = ['s%d' % i for i in range(n)]
    out['hwm1_kb'] = read_status_kb('VmHWM')
    if traced:
        out['tm1'] = tracemalloc.get_tracemalloc_memory()
        out['traced_memory'] = tracemalloc.get_traced_memory()[0]
        out['snapshot_s'] = []
        for _ in range(spec['snapshots']):
            dt, snap = timed(tracemalloc.take_snapshot)
            out['snapshot_s'].append(dt)
            out['ntraces'] = len(snap.traces)
            del snap
        tracemalloc.stop()
    del data
    return out


# Stdlib modules that the child (this file) does not import itself.
IMPORT_MODULES = (
    'asyncio', 'email.parser', 'email.policy', 'xml.etree.ElementTree',
    'http.client', 'urllib.request', 'logging', 'dataclasses', 'typing',
    'pathlib', 'csv', 'sqlite3', 'pickle', 'unittest', 'difflib', 'tarfile',
    'tomllib', 'zipfile', 'calendar', 'configparser', 'ipaddress', 'uuid',
    'ast', 'inspect')
HEAP_SHAPES = {
    'fragmented': '2M small str untraced, every 100th freed; then 20k '
                  'new ones traced fill the holes',
    'sparse': '1.28M small str traced, 1 in 64 kept',
    'mixed': '20k bytes objects of 300-4000 B',
    'imports': 'importing %d stdlib modules' % len(IMPORT_MODULES),
}


def child_heap(spec):
    """get_tracemalloc_memory() growth and the number of traces for one
    heap shape (HEAP_SHAPES), 1 frame, in a fresh process."""
    import gc
    import importlib
    import random
    import tracemalloc
    shape = spec['shape']
    gc.collect()
    if shape == 'fragmented':
        heap = ['s%07d' % i for i in range(2_000_000)]
        for i in range(0, len(heap), 100):
            heap[i] = None
    tracemalloc.start(1)
    tm0 = tracemalloc.get_tracemalloc_memory()
    if shape == 'fragmented':
        keep = ['t%07d' % i for i in range(20_000)]
    elif shape == 'sparse':
        tmp = ['u%07d' % i for i in range(64 * 20_000)]
        keep = tmp[::64]
        del tmp
    elif shape == 'mixed':
        rng = random.Random(16)
        keep = [bytes(rng.randrange(300, 4001)) for _ in range(20_000)]
    elif shape == 'imports':
        keep = [importlib.import_module(m) for m in IMPORT_MODULES]
    else:
        raise ValueError('unknown heap shape %r' % shape)
    tm1 = tracemalloc.get_tracemalloc_memory()
    ntraces = len(tracemalloc.take_snapshot().traces)
    tracemalloc.stop()
    del keep
    return {'tm0': tm0, 'tm1': tm1, 'ntraces': ntraces}


def back_to_back(spec, names, units, run):
    """The throughput and speedup curves of run(name, n), which runs
    workload `name` with n threads or interpreters (units units of work
    each) and returns the wall time, or raises RuntimeError: per
    repetition and workload, the runs with n = 1 to nmax back to back
    (the order flipping every repetition), so that each workload's
    speedup compares runs a fraction of a second apart."""
    counts = range(1, spec['nmax'] + 1)
    wall = {n: [] for n in counts}      # per repetition: all the workloads
    cpu = {n: [] for n in counts}       # CPU time / wall time: parallelism
    speedup = {name: {n: [] for n in counts if n > 1} for name in names}
    first = spec.get('first', 0)
    for rep in range(first, first + spec['reps']):
        order = list(counts) if rep % 2 == 0 else list(counts)[::-1]
        total = {n: [0.0, 0.0] for n in counts}     # wall, CPU time
        for name in names:
            times = {}
            for n in order:
                c0 = time.process_time()
                times[n] = run(name, n)
                total[n][0] += times[n]
                total[n][1] += time.process_time() - c0
            for n in speedup[name]:
                speedup[name][n].append(n * times[1] / times[n])
        for n in counts:
            wall[n].append(n * units / total[n][0])
            cpu[n].append(total[n][1] / total[n][0])
    return {'throughput': {str(n): v for n, v in wall.items()},
            'cpu_per_wall': {str(n): v for n, v in cpu.items()},
            'speedup': {name: {str(n): v for n, v in by_n.items()}
                        for name, by_n in speedup.items()}}


def child_threads(spec):
    """N threads of this one interpreter running the workloads, traced
    (frames > 0) or not, the cyclic GC off while timed (see
    back_to_back())."""
    import gc
    import tracemalloc
    wl = load_workloads()['WORKLOADS']
    names, scale, frames = spec['names'], spec['scale'], spec['frames']
    expected = {name: wl[name](scale) for name in names}  # warm up, too
    errors = []

    def run(name, n):
        def work():
            if wl[name](scale) != expected[name]:
                errors.append('%s: result differs in a thread' % name)
        gc.collect()
        gc.disable()
        if frames:
            tracemalloc.start(frames)
        try:
            wall = timed_threads([work] * n, errors)
        finally:
            if frames:
                tracemalloc.stop()
            gc.enable()
        if errors:
            raise RuntimeError(errors[0])
        return wall

    try:
        out = back_to_back(spec, names, 1, run)
    except RuntimeError as exc:
        return {'error': str(exc)}
    out['gil_enabled'] = getattr(sys, '_is_gil_enabled', lambda: True)()
    return out


def child_scaling(spec):
    """N isolated subinterpreters, one thread each, running the
    workloads (see back_to_back())."""
    import _interpreters
    names, scale, units, frames = (spec['names'], spec['scale'],
                                   spec['units'], spec['frames'])
    ids = [_interpreters.create('isolated') for _ in range(spec['nmax'])]
    warm = 'run_mix(%r, %r, 1, %d)' % (list(names), scale * 0.25, frames)

    def run(name, n):
        work = 'run_mix(%r, %r, %d, %d)' % ([name], scale, units, frames)
        return run_in_threads(ids[:n], work)

    try:
        for iid in ids:
            exc = (_interpreters.run_string(iid, WORKLOADS_SRC)
                   or _interpreters.run_string(iid, warm))
            if exc is not None:
                return {'error': exc.formatted,
                        'unsupported': (exc.type.__name__ == 'ImportError'
                                        and 'subinterpreter' in exc.msg)}
        try:
            return back_to_back(spec, names, units, run)
        except RuntimeError as exc:
            return {'error': str(exc), 'unsupported': False}
    finally:
        for iid in ids:
            _interpreters.destroy(iid)


# The work of the subinterpreters of the isolation section.
ISOLATION_SRC = r'''
def build_dicts(rounds):
    for _ in range(rounds):
        data = [{'a': i, 'b': str(i), 'c': [i]} for i in range(20000)]
        del data


def string_iterations(seconds):
    """The time of each iteration that builds 2000 strings, for seconds."""
    import time
    times = []
    end = time.perf_counter() + seconds
    i = 0
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        data = ['%d-%d' % (i, j) for j in range(2000)]
        del data
        times.append(time.perf_counter() - t0)
        i += 1
    return times
'''

ISOLATION_CONFIGS = ('nobody', 'main', 'subs')


def timed_threads(funcs, errors):
    """Run each of funcs in its own thread, all released at once; return
    the wall time until the last one ends.  An exception goes to errors."""
    import threading
    barrier = threading.Barrier(len(funcs) + 1)

    def worker(func):
        barrier.wait()
        try:
            func()
        except BaseException as exc:
            errors.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(f,)) for f in funcs]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    return time.perf_counter() - t0


def run_in_threads(ids, code):
    """Run code in each interpreter of ids, each in its own thread; return
    the wall time, or raise RuntimeError."""
    import _interpreters
    errors = []

    def run(iid):
        exc = _interpreters.run_string(iid, code)
        if exc is not None:
            errors.append(exc.formatted)

    wall = timed_threads([lambda iid=iid: run(iid) for iid in ids], errors)
    if errors:
        raise RuntimeError(errors[0])
    return wall


def child_isolation(spec):
    """Two isolated subinterpreters building dicts: wall time while nobody
    traces, while main traces, while each traces itself."""
    import _interpreters
    import tracemalloc
    ids = [_interpreters.create('isolated') for _ in range(2)]
    work = 'build_dicts(%d)' % spec['rounds']
    out = {config: [] for config in ISOLATION_CONFIGS}
    try:
        for iid in ids:
            _interpreters.run_string(iid, ISOLATION_SRC)
        can_trace = _interpreters.run_string(
            ids[0], 'import tracemalloc') is None
        configs = [c for c in ISOLATION_CONFIGS if c != 'subs' or can_trace]
        run_in_threads(ids, 'build_dicts(1)')     # warm up
        first = spec.get('first', 0)
        for rep in range(first, first + spec['reps']):
            order = configs if rep % 2 == 0 else configs[::-1]
            for config in order:
                if config == 'main':
                    tracemalloc.start(1)
                elif config == 'subs':
                    run_in_threads(ids, 'import tracemalloc; '
                                        'tracemalloc.start(1)')
                try:
                    out[config].append(run_in_threads(ids, work))
                except RuntimeError as exc:
                    return {'error': str(exc)}
                finally:
                    if config == 'main':
                        tracemalloc.stop()
                    elif config == 'subs':
                        run_in_threads(ids, 'import tracemalloc; '
                                            'tracemalloc.stop()')
    finally:
        for iid in ids:
            _interpreters.destroy(iid)
    return out


def times_from(iid, name):
    """The largest and the median of the list of floats `name` of
    interpreter iid's __main__, and its length."""
    import _interpreters
    rfd, wfd = os.pipe()
    try:
        # A short result: the pipe must hold it all.
        exc = _interpreters.run_string(iid, (
            'import json, os, statistics; os.set_blocking(%d, False); '
            'os.write(%d, json.dumps([max(%s), statistics.median(%s), '
            'len(%s)]).encode())' % (wfd, wfd, name, name, name)))
    finally:
        os.close(wfd)
    with open(rfd, 'rb') as f:
        data = f.read()
    if exc is not None:
        raise RuntimeError(exc.formatted)
    return json.loads(data)


def child_stall(spec):
    """Main traces `n` blocks.  The time to free a snapshot of them, with
    no other interpreter, then with two that trace alive; the times of the
    2000-string iterations of a non-tracing subinterpreter, with main idle,
    then while main takes snapshots over and over."""
    import _interpreters
    import threading
    import tracemalloc
    tracemalloc.start(1)
    data = ['s%d' % i for i in range(spec['n'])]
    out = {'free_alone': [], 'free_with_subs': []}

    def time_snapshot_frees(key):
        for _ in range(spec['frees']):
            snapshot = tracemalloc.take_snapshot()
            t0 = time.perf_counter()
            del snapshot
            out[key].append(time.perf_counter() - t0)

    try:
        time_snapshot_frees('free_alone')
        subs = [_interpreters.create('isolated') for _ in range(2)]
        try:
            if all(_interpreters.run_string(
                    iid, 'import tracemalloc; tracemalloc.start(1)') is None
                   for iid in subs):
                time_snapshot_frees('free_with_subs')
        finally:
            for iid in subs:
                _interpreters.destroy(iid)

        iid = _interpreters.create('isolated')
        try:
            _interpreters.run_string(iid, ISOLATION_SRC)
            code = 'times = string_iterations(%r)' % spec['seconds']
            for label in ('idle', 'snapshots'):
                done = threading.Event()
                counts = [0]

                def snapshots():
                    while not done.is_set():
                        tracemalloc.take_snapshot()
                        counts[0] += 1

                thread = threading.Thread(target=snapshots)
                if label == 'snapshots':
                    thread.start()
                try:
                    run_in_threads([iid], code)
                except RuntimeError as exc:
                    return {'error': str(exc)}
                finally:
                    done.set()
                    if label == 'snapshots':
                        thread.join()
                out[label] = times_from(iid, 'times')   # max, median, n
                out[label + '_snapshots'] = counts[0]
        finally:
            _interpreters.destroy(iid)
    finally:
        tracemalloc.stop()
    del data
    return out


def child_imports(spec):
    """Import the modules of the imports heap shape untraced, so that
    their .pyc files exist before it measures: compiling a module from
    source traces some 10% more blocks than loading its bytecode, and
    the first child of a fresh build would compile them."""
    import importlib
    for name in IMPORT_MODULES:
        importlib.import_module(name)
    return {}


CHILD_MODES = {'untraced': child_untraced, 'overhead': child_overhead,
               'memory': child_memory, 'isolation': child_isolation,
               'stall': child_stall, 'scaling': child_scaling,
               'heap': child_heap, 'imports': child_imports,
               'threads': child_threads}


def child_main(mode, spec):
    result = CHILD_MODES[mode](json.loads(spec))
    sys.stdout.write(RESULT_MARK + json.dumps(result) + '\n')


# --- Driver side ------------------------------------------------------------

class ChildError(Exception):
    pass


def child_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith('PYTHON')}
    env['PYTHONHASHSEED'] = '0'
    return env


# The modes of the single-threaded sections, whose children are pinned to
# one CPU (see --cpu).
PINNED_MODES = ('untraced', 'overhead', 'memory', 'heap')


def child_argv(python, mode, spec):
    """The command line of a child of this file running `mode`."""
    return [python, '-s', '-P', os.path.abspath(__file__),
            '--child', mode, json.dumps(spec)]


def cpu_pinner(cpu):
    """A preexec_fn pinning the child to cpu, or None if cpu is None."""
    if cpu is None:
        return None
    return lambda: os.sched_setaffinity(0, {cpu})


def run_child(python, mode, spec, timeout=1800, cpu=None):
    try:
        proc = subprocess.run(child_argv(python, mode, spec),
                              capture_output=True, text=True,
                              env=child_env(), timeout=timeout,
                              preexec_fn=cpu_pinner(cpu))
    except subprocess.TimeoutExpired:
        raise ChildError('%s %s: timed out after %d s' % (python, mode, timeout))
    except OSError as exc:
        raise ChildError('%s %s: cannot run: %s' % (python, mode, exc))
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode != 0 or not lines:
        why = ('killed by signal %d' % -proc.returncode
               if proc.returncode < 0 else 'exit status %d' % proc.returncode)
        tail = '\n'.join(proc.stderr.strip().splitlines()[-15:])
        raise ChildError(('%s --child %s: %s\n%s' % (python, mode, why,
                                                     tail)).strip())
    return json.loads(lines[-1][len(RESULT_MARK):])


class ServingChild:
    """A child started with --child MODE that answers a line written to
    its stdin with a result line (see child_untraced())."""

    def __init__(self, python, mode, spec, cpu=None, timeout=1800):
        self.what = '%s --child %s' % (python, mode)
        self.timeout = timeout
        self.errors = tempfile.TemporaryFile('w+')
        try:
            self.proc = subprocess.Popen(
                child_argv(python, mode, spec),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=self.errors, text=True, env=child_env(),
                preexec_fn=cpu_pinner(cpu))
        except OSError as exc:
            self.errors.close()
            raise ChildError('%s: cannot run: %s' % (self.what, exc))
        self.reply()                                # warmed up

    def reply(self):
        """The next result line, as an object."""
        # A child that hangs is killed, and its stdout ends.
        watchdog = threading.Timer(self.timeout, self.proc.kill)
        watchdog.start()
        try:
            while True:
                line = self.proc.stdout.readline()
                if not line:
                    self.fail('no result' if watchdog.is_alive() else
                              'timed out after %d s' % self.timeout)
                if line.startswith(RESULT_MARK):
                    return json.loads(line[len(RESULT_MARK):])
        finally:
            watchdog.cancel()

    def ask(self, request):
        try:
            self.proc.stdin.write(request + '\n')
            self.proc.stdin.flush()
        except OSError:
            self.fail('stopped reading')
        return self.reply()

    def fail(self, why):
        self.close()
        status = self.proc.returncode
        if status:
            why += (', killed by signal %d' % -status if status < 0
                    else ', exit status %d' % status)
        raise ChildError('%s: %s\n%s' % (self.what, why, self.stderr_tail))

    def close(self):
        """End the child (its stdin ends), and keep its stderr's tail."""
        if self.errors.closed:
            return
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.errors.seek(0)
        self.stderr_tail = '\n'.join(
            self.errors.read().strip().splitlines()[-15:])
        self.errors.close()


def merge_samples(into, more):
    """Extend the lists of samples of a child's result `into` by those of
    `more`, a result of the same mode; other values stay `into`'s."""
    for key, value in more.items():
        if isinstance(value, list):
            into[key] = into.get(key, []) + value
        elif isinstance(value, dict):
            into[key] = merge_samples(into.get(key, {}), value)
        else:
            into.setdefault(key, value)
    return into


def suite_speedup(speedup, n):
    """The stat() of the speedups with n threads of a threads child's
    result ({workload: {n: [one per repetition]}}): the geometric mean
    of the workloads' medians, with the spread of the repetitions'
    geometric means."""
    per_workload = [by_n[n] for by_n in speedup.values()]
    out = stat([geomean(rs) for rs in zip(*per_workload)])
    out['median'] = geomean([statistics.median(rs) for rs in per_workload])
    return out


def stat(values):
    """{'median', 'spread' (median absolute deviation), 'n'} of samples."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    med = statistics.median(values)
    return {'median': med,
            'spread': statistics.median(abs(v - med) for v in values),
            'n': len(values)}


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def check(targets, key, fork, ratio):
    """True/False if the target of `key` is met/missed, None if no target."""
    if key not in targets:
        return None
    what, op, bound, _ = targets[key]
    value = (fork if what == 'fork' else ratio)
    if not isinstance(value, dict):
        return False
    value = value['median']
    return value <= bound if op == '<=' else value >= bound


def target_text(targets, key):
    if key not in targets:
        return ''
    what, op, bound, unit = targets[key]
    return '%s %s %g%s' % ('fork' if what == 'fork' else 'fork/upstream',
                           op, bound, unit)


class Bench:
    def __init__(self, args):
        self.args = args
        self.pythons = {'upstream': args.upstream, 'fork': args.fork}
        self.targets = dict(TARGETS, **(FT_TARGETS if args.ft else {}))
        self.rows = []
        self.raw = {}
        self.errors = []
        self.notes = []
        self.cpu, self.calibration = None, {}   # see choose_cpu()

    def log(self, msg):
        print('[bench %6.1fs] %s' % (time.monotonic() - self.t0, msg),
              file=sys.stderr, flush=True)

    def child(self, which, mode, spec):
        t = time.monotonic()
        cpu = self.cpu if mode in PINNED_MODES else None
        try:
            return run_child(self.pythons[which], mode, spec, cpu=cpu)
        finally:
            self.log('%s %s %s: %.1f s' % (which, mode, json.dumps(
                {k: v for k, v in spec.items() if k != 'names'}),
                time.monotonic() - t))

    def row(self, key, metric, unit, upstream=None, fork=None, ratio=None,
            note=''):
        self.rows.append({
            'key': key, 'metric': metric, 'unit': unit,
            'upstream': upstream, 'fork': fork, 'ratio': ratio,
            'target': target_text(self.targets, key),
            'met': check(self.targets, key, fork, ratio),
            'note': note})

    def error(self, section, exc):
        msg = '%s: %s' % (section, exc)
        self.errors.append(msg)
        self.log('ERROR ' + msg)
        self.row(section, '%s: measurement failed (see notes)' % section,
                 '', note='error')

    # -- sections --

    def untraced(self):
        a = self.args
        t0 = time.monotonic()
        spec = {'names': a.names, 'scale': a.scale}
        times = {w: {name: [] for name in a.names} for w in self.pythons}
        # Pairs a fraction of a second apart: the machine's speed drifts
        # over seconds.  And fresh children for every three pairs: where
        # a process's heap, stack and libraries lie (chosen anew by each
        # exec) moves a workload's time by up to 5%, the same way for the
        # whole life of the process.  One child per build for the whole
        # section compared two such draws, and a build with itself came
        # out at 0.95x-1.05x.
        for session in range(a.reps):
            children = {}
            try:
                for which in self.pythons:
                    children[which] = ServingChild(
                        self.pythons[which], 'untraced', spec, self.cpu)
                for i in range(3 * session, 3 * session + 3):
                    for j, name in enumerate(a.names):
                        self.untraced_pair(children, times, name, i + j)
            finally:
                for child in children.values():
                    child.close()
        self.log('untraced pairs: %.1f s' % (time.monotonic() - t0))
        self.raw['untraced'] = times
        ratios_all = []
        for name in a.names:
            t = {w: times[w][name] for w in self.pythons}
            ratios = [f / u for f, u in zip(t['fork'], t['upstream'])]
            ratios_all.append(ratios)
            self.row('untraced', 'untraced time: %s' % name, 's',
                     stat(t['upstream']), stat(t['fork']), stat(ratios))
        # Headline: geomean of the per-workload medians; spread: that of
        # the geomeans of the pairs run together.
        per_pass_gm = [geomean(rs) for rs in zip(*ratios_all)]
        gm = stat(per_pass_gm)
        gm['median'] = geomean([statistics.median(rs) for rs in ratios_all])
        self.row('untraced', 'untraced fork/upstream: geomean', 'x',
                 ratio=gm)

    def untraced_pair(self, children, times, name, k):
        """Run name in both children, back to back, the order by k."""
        order = ('fork', 'upstream') if k % 2 == 0 else ('upstream', 'fork')
        results = {}
        for which in order:
            res = children[which].ask(name)
            times[which][name].append(res['time'])
            results[which] = res['result']
        if results['fork'] != results['upstream']:
            raise ChildError('%s: the builds differ in result' % name)

    def overhead(self):
        a = self.args
        for frames in a.frames:
            key = 'overhead-%d' % frames
            res = {}
            for which in ('fork', 'upstream'):
                res[which] = self.child(which, 'overhead', {
                    'names': a.names, 'scale': a.scale, 'frames': frames,
                    'pairs': a.reps if which == 'fork' else a.upstream_pairs})
            self.raw[key] = res
            ratios = {w: {} for w in res}
            for name in a.names:
                for w in res:
                    d = res[w][name]
                    ratios[w][name] = [t / u for t, u in
                                       zip(d['traced'], d['untraced'])]
                up, fk = (stat(ratios[w][name]) for w in ('upstream', 'fork'))
                self.row(key, 'overhead %d frame%s: %s' % (
                    frames, 's' if frames > 1 else '', name), 'x', up, fk,
                    {'median': fk['median'] / up['median']})
            gms = {}
            for w in res:
                per_pair = [geomean(rs) for rs in zip(*ratios[w].values())]
                gms[w] = stat(per_pair)
                gms[w]['median'] = geomean([statistics.median(rs) for rs
                                            in ratios[w].values()])
            self.row(key + '-geomean', 'overhead %d frame%s: geomean' % (
                frames, 's' if frames > 1 else ''), 'x',
                gms['upstream'], gms['fork'],
                {'median': gms['fork']['median'] / gms['upstream']['median']})

    def memory(self, want_memory, want_snapshot):
        a = self.args
        n = MEMORY_BLOCKS
        rounds = []
        for r in range(a.mem_reps):
            order = ('fork', 'upstream') if r % 2 == 0 else ('upstream', 'fork')
            res = {}
            for which in order:
                res[which] = {
                    'untraced': self.child(which, 'memory', {
                        'n': n, 'traced': False}) if want_memory else None,
                    'traced': self.child(which, 'memory', {
                        'n': n, 'traced': True,
                        'snapshots': 2 if want_snapshot else 0})}
            rounds.append(res)
        self.raw['memory'] = rounds
        per = {w: [rd[w] for rd in rounds] for w in self.pythons}
        if want_memory:
            tm = {w: stat([(d['traced']['tm1'] - d['traced']['tm0']) / n
                           for d in per[w]]) for w in per}
            self.pair_row('tm-memory', 'get_tracemalloc_memory() per live '
                          'block: 1M small str', 'B', tm)
            growth = lambda d: d['hwm1_kb'] - d['rss0_kb']
            rss = {w: stat([(growth(d['traced']) - growth(d['untraced']))
                            * 1024 / n for d in per[w]]) for w in per}
            self.pair_row('rss', 'peak RSS growth per live block: 1M small '
                          'str', 'B', rss)
            self.heap_shapes()
        if want_snapshot:
            snap = {w: stat([t for d in per[w] for t in d['traced']['snapshot_s']])
                    for w in per}
            ratios = [statistics.median(rd['fork']['traced']['snapshot_s'])
                      / statistics.median(rd['upstream']['traced']['snapshot_s'])
                      for rd in rounds]
            ntraces = rounds[0]['fork']['traced'].get('ntraces')
            self.row('snapshot', 'take_snapshot() of 1M traces', 's',
                     snap['upstream'], snap['fork'], stat(ratios),
                     note='%s traces' % ntraces)

    def pair_row(self, key, metric, unit, per, note=''):
        """A row of {'upstream': stat, 'fork': stat}, with their ratio."""
        up, fk = per['upstream'], per['fork']
        self.row(key, metric, unit, up, fk,
                 {'median': fk['median'] / up['median']}, note=note)

    def heap_shapes(self):
        """get_tracemalloc_memory() growth per trace for each heap shape,
        one fresh child per shape, interpreter and round."""
        for which in self.pythons:
            self.child(which, 'imports', {})
        rounds = []
        for r in range(self.args.mem_reps):
            order = ('fork', 'upstream') if r % 2 == 0 else ('upstream', 'fork')
            rounds.append({shape: {which: self.child(which, 'heap', {
                'shape': shape}) for which in order} for shape in HEAP_SHAPES})
        self.raw['heap'] = rounds
        for shape, what in HEAP_SHAPES.items():
            per = {w: stat([(rd[shape][w]['tm1'] - rd[shape][w]['tm0'])
                            / rd[shape][w]['ntraces'] for rd in rounds])
                   for w in self.pythons}
            self.pair_row('tm-shape', 'get_tracemalloc_memory() per trace: '
                          '%s' % shape, 'B', per, note='%s; %d traces' % (
                              what, rounds[0][shape]['fork']['ntraces']))

    def alternated(self, mode, spec, reps, upstream_may_fail=False):
        """{python: result} of `reps` children per build, one repetition
        each, the builds taking turns to go first; a result merges the
        samples of its build's children, or is the first that failed: an
        error, or None for an upstream that cannot run it (see
        upstream_child(), if upstream_may_fail).

        The builds' children interleave because the drift of the machine
        is not a build's: in two runs of the threads section, the build
        whose child ran second was ahead by ~18%, untraced too."""
        return self.alternated_frames(mode, spec, reps, (None,),
                                      upstream_may_fail)[None]

    def alternated_frames(self, mode, spec, reps, frames=(1, 0),
                          upstream_may_fail=False):
        """{n: alternated() result for spec with frames=n} for each n of
        `frames` (None: spec as it is), the frames taking turns within
        each repetition as the builds do, so that an untraced reference
        sees the same machine as the traced runs (see run())."""
        res = {n: {} for n in frames}
        for rep in range(reps):
            order = ('fork', 'upstream') if rep % 2 == 0 else ('upstream',
                                                               'fork')
            for n in frames if rep % 2 == 0 else frames[::-1]:
                for which in order:
                    prev = res[n].get(which, {})
                    if prev is None or 'error' in prev:
                        continue
                    child_spec = dict(spec, reps=1, first=rep)
                    if n is not None:
                        child_spec['frames'] = n
                    if which == 'upstream' and upstream_may_fail:
                        out = self.upstream_child(mode, child_spec)
                    else:
                        out = self.child(which, mode, child_spec)
                    res[n][which] = (merge_samples(prev, out)
                                     if out is not None and 'error' not in out
                                     else out)
        return res

    def upstream_child(self, mode, spec):
        """The upstream child's result, or None (with a note) if upstream
        cannot run it: it traces every interpreter at once."""
        try:
            out = self.child('upstream', mode, spec)
        except ChildError as exc:
            self.notes.append('upstream %s: %s' % (
                mode, str(exc).strip().splitlines()[-1]))
            return None
        return None if 'error' in out else out

    def isolation(self):
        a = self.args
        res = self.alternated('isolation', {'rounds': 2 if a.quick else 4},
                              a.reps, upstream_may_fail=True)
        if 'error' in res['fork']:
            raise ChildError('fork isolation:\n' + res['fork']['error'])
        self.raw['isolation'] = res

        def ratios(which, config):
            out = res[which]
            if out is None or not out.get(config):
                return NA
            return stat([t / u for t, u in zip(out[config], out['nobody'])])

        for config, key, label in (
                ('main', 'others-main-traces', 'main traces'),
                ('subs', 'others-subs-trace', 'each traces itself')):
            up, fk = ratios('upstream', config), ratios('fork', config)
            self.row(key, '2 isolated subinterps, %s: time / nobody '
                     'tracing' % label, 'x', up, fk)

        spec = {'n': 2 * MEMORY_BLOCKS, 'seconds': 2.0 if a.quick else 5.0,
                'frees': 2}
        res = {'fork': self.child('fork', 'stall', spec),
               'upstream': self.upstream_child('stall', spec)}
        if 'error' in res['fork']:
            raise ChildError('fork stall:\n' + res['fork']['error'])
        self.raw['stall'] = res

        def worst(which, label):
            out = res[which]
            if out is None:
                return NA
            largest, _, n = out[label]
            return {'median': largest * 1e3, 'spread': None, 'n': n}

        snapshots = res['fork']['snapshots_snapshots']
        for label, key, what in (
                ('idle', 'stall-idle', 'main idle'),
                ('snapshots', 'stall', 'main snapshotting 2M traces')):
            self.row(key, 'worst 2000-string iteration of a non-tracing '
                     'subinterp, %s' % what, ' ms',
                     worst('upstream', label), worst('fork', label),
                     note=('%d snapshots meanwhile' % snapshots
                           if label == 'snapshots' else ''))

        def free_ratio(which):
            out = res[which]
            if out is None or not out['free_with_subs']:
                return NA
            return stat([w / u for w, u in zip(out['free_with_subs'],
                                               out['free_alone'])])

        self.row('snapshot-free', 'freeing a 2M-trace snapshot, 2 tracing '
                 'subinterps alive / none', 'x', free_ratio('upstream'),
                 free_ratio('fork'))

    def scaling(self):
        a = self.args
        names = [n for n in a.names if n not in NOT_IN_SUBINTERPRETERS]
        spec = {'names': names, 'scale': a.scale * 0.5, 'units': 1,
                'nmax': a.nmax}
        res = {}
        by_frames = self.alternated_frames('scaling', spec, a.scaling_reps)
        for frames, outs in by_frames.items():
            for which, out in outs.items():
                res['%s-%d' % (which, frames)] = out
                if 'error' in out and not (which == 'upstream' and
                                           out.get('unsupported')):
                    raise ChildError('%s, frames=%d:\n%s' % (
                        which, frames, out['error']))
        self.raw['scaling'] = res

        def curve(which, frames):
            out = res['%s-%d' % (which, frames)]
            if 'throughput' not in out:
                return None
            return {int(n): v for n, v in out['throughput'].items()}

        def speedups(which, frames):
            out = res['%s-%d' % (which, frames)]
            if 'speedup' not in out:
                return {n: NA for n in range(2, a.nmax + 1)}
            return {n: suite_speedup(out['speedup'], str(n))
                    for n in range(2, a.nmax + 1)}

        for frames, label in ((1, 'tracing'), (0, 'not tracing (reference)')):
            c = {w: curve(w, frames) for w in self.pythons}
            note = ('upstream: tracemalloc cannot be imported in an '
                    'isolated subinterpreter' if c['upstream'] is None else '')
            self.curve_rows(c, a.nmax, 'interp', label, 'scaling' if frames
                            else 'scaling-ref', note,
                            {w: speedups(w, frames) for w in self.pythons})

    def curve_rows(self, c, nmax, what, label, key, note='', speedups=None):
        """Throughput rows for N = 1 .. nmax and speedup rows vs N = 1, of
        c = {python: {N: [samples]} or None (n/a)}; the speedups are those
        of the samples, or speedups[python][N] (a stat()) if given."""
        for n in range(1, nmax + 1):
            thr = {w: stat(c[w][n]) if c[w] else NA for w in c}
            self.row('throughput', '%d %s%s %s: work units/s' % (
                n, what, 's' if n > 1 else '', label), '/s',
                thr['upstream'], thr['fork'], note=note if n == 1 else '')
        for n in range(2, nmax + 1):
            if speedups is not None:
                sp = {w: speedups[w][n] for w in c}
                how = ': geomean of the workloads'
            else:
                sp = {w: stat([x / y for x, y in zip(c[w][n], c[w][1])])
                      if c[w] else NA for w in c}
                how = ''
            self.row(key if key.endswith('-ref') else '%s-%d' % (key, n),
                     'speedup %d %ss vs 1, %s%s' % (n, what, label, how),
                     'x', sp['upstream'], sp['fork'])

    def threads(self):
        """N threads of one interpreter running the suite, traced with 1
        frame and not: throughput and speedup vs 1 thread."""
        a = self.args
        spec = {'names': a.names, 'scale': a.scale * 0.25, 'nmax': 2}
        c, par, sp = {}, {}, {}
        by_frames = self.alternated_frames('threads', spec, a.scaling_reps)
        for frames, outs in by_frames.items():
            for which, out in outs.items():
                if 'error' in out:
                    raise ChildError('%s, frames=%d:\n%s' % (
                        which, frames, out['error']))
                self.raw['threads-%s-%d' % (which, frames)] = out
                c[frames, which] = {int(n): v for n, v
                                    in out['throughput'].items()}
                par[frames, which] = stat(out['cpu_per_wall']['2'])
                sp[frames, which] = {2: suite_speedup(out['speedup'], '2')}
        gil = self.raw['threads-fork-1']['gil_enabled']
        for frames, label in ((1, 'tracing 1 frame'),
                              (0, 'not tracing (reference)')):
            self.curve_rows({w: c[frames, w] for w in self.pythons}, 2,
                            'thread', label, 'threads' if frames
                            else 'threads-ref',
                            'the GIL is enabled' if gil else '',
                            {w: sp[frames, w] for w in self.pythons})
            self.row('parallelism', '2 threads %s: CPU time / wall time' % (
                label), 'x', par[frames, 'upstream'], par[frames, 'fork'],
                note='well below 2x: the threads waited (a lock, the GIL, '
                'or CPUs taken by other load); near 2x with no speedup: they '
                'ran but contended (spinning, shared cache lines)'
                if frames else '')

    def choose_cpu(self):
        """The CPU of the single-threaded sections (see --cpu)."""
        a = self.args
        if a.cpu == 'none':
            return None, {}
        if isinstance(a.cpu, int):
            return a.cpu, {}
        times = calibrate_cpus()
        if not times:
            return None, {}
        return min(times, key=times.get), times

    def run(self):
        a = self.args
        self.t0 = time.monotonic()
        self.cpu, self.calibration = self.choose_cpu()
        self.log('single-threaded sections: %s'
                 % pinned_text(self.cpu, self.calibration))
        # The report's order.  The sections run in another: those that
        # time several threads (wall time) before those that allocate
        # and free gigabytes.  For a minute or so after a process of
        # this virtual machine has freed that much, two threads that
        # fault pages in scale worse, untraced too (the scaling section
        # gave 1.2x to 1.9x untraced after a 12 GB bytearray, and 1.17x
        # tracing where the same children gave 1.92x run on their own).
        sections = {
            'untraced': self.untraced,
            'overhead': self.overhead,
            'memory': lambda: self.memory('memory' in a.sections,
                                          'snapshot' in a.sections),
            'isolation': self.isolation,
            'scaling': self.scaling,
            'threads': self.threads,
        }
        run_order = ('untraced', 'overhead', 'scaling', 'threads',
                     'isolation', 'memory')
        rows = {}
        for name in run_order:
            if name == 'memory':
                if not {'memory', 'snapshot'} & set(a.sections):
                    continue
            elif name not in a.sections:
                continue
            self.log('section %s' % name)
            start = len(self.rows)
            try:
                sections[name]()
            except ChildError as exc:
                self.error(name, exc)
            rows[name] = self.rows[start:]
        self.rows = [row for name in sections for row in rows.get(name, ())]
        self.elapsed = time.monotonic() - self.t0


# --- Reporting ----------------------------------------------------------------

def fmt(s, unit):
    if not isinstance(s, dict):
        return s or ''
    m, sp = s['median'], s.get('spread')
    if unit == 'x':
        text, sps = '%.2fx' % m, '%.2f' % sp if sp is not None else None
    elif unit == 'B':
        text, sps = '%.1f B' % m, '%.1f' % sp if sp is not None else None
    elif unit == 's':
        text, sps = '%.3f s' % m, '%.3f' % sp if sp is not None else None
    elif unit == ' ms':
        text, sps = '%.1f ms' % m, '%.1f' % sp if sp is not None else None
    else:
        text, sps = '%.2f%s' % (m, unit), '%.2f' % sp if sp is not None else None
    return text if sps is None else '%s ± %s' % (text, sps)


HEADER = ('metric', 'upstream', 'fork', 'fork/upstream', 'target', 'met?')


def table_cells(rows):
    out = []
    for r in rows:
        met = {True: 'yes', False: 'NO', None: ''}[r['met']]
        if r['note'] == 'error':
            met = 'ERROR'
        out.append((r['metric'], fmt(r['upstream'], r['unit']),
                    fmt(r['fork'], r['unit']), fmt(r['ratio'], 'x'),
                    r['target'], met))
    return out


def text_table(rows):
    cells = [HEADER] + table_cells(rows)
    widths = [max(len(c[i]) for c in cells) for i in range(len(HEADER))]
    lines = []
    for i, c in enumerate(cells):
        lines.append('  '.join(v.ljust(w) for v, w in zip(c, widths)).rstrip())
        if i == 0:
            lines.append('  '.join('-' * w for w in widths))
    return '\n'.join(lines)


def pinned_text(cpu, calibration):
    """Where the single-threaded sections ran: cpu (None: not pinned), and
    the calibration's {cpu: seconds} that chose it, if any."""
    if cpu is None:
        return 'not pinned'
    text = 'pinned to CPU %d' % cpu
    if calibration:
        text += ' (the fastest: %s)' % ', '.join(
            'CPU %s %.3f s' % kv for kv in calibration.items())
    return text


def markdown(bench, meta):
    cells = table_cells(bench.rows)
    md = ['# tracemalloc benchmark: fork vs upstream%s' % (
              ' (free-threaded builds)' if meta['ft'] else ''), '',
          '- date: %s' % meta['date'],
          '- command: `%s`' % meta['command'],
          '- fork: `%s` — `%s`' % (meta['fork'], meta['fork_version']),
          '- upstream: `%s` — `%s`' % (meta['upstream'],
                                        meta['upstream_version']),
          '- machine: %s, %d CPUs, load average %s at start, %s at end' % (
              meta['platform'], meta['nproc'], meta['loadavg_start'],
              meta['loadavg_end']),
          '- single-threaded sections: %s' % pinned_text(
              meta['cpu'], meta['cpu_calibration_s']),
          '- repetitions: %d (upstream overhead pairs %d, memory %d, '
          'scaling and threads %d), workload scale %g, wall time %.0f s' % (
              meta['reps'], meta['upstream_pairs'], meta['mem_reps'],
              meta['scaling_reps'], meta['scale'], meta['elapsed_s']),
          '',
          '| ' + ' | '.join(HEADER) + ' |',
          '|' + '---|' * len(HEADER)]
    for c in cells:
        md.append('| ' + ' | '.join(v.replace('|', '\\|') for v in c) + ' |')
    md += ['', 'Values are medians ± median absolute deviation.  Overhead = '
           'traced / untraced CPU time in one process (back-to-back pairs); '
           'memory per block = growth for 1M live str objects / 1M; per '
           'trace (heap shapes) = growth / traces; scaling = wall-time '
           'throughput of N isolated subinterpreters in N threads; threads '
           '= that of N threads of one interpreter.  See '
           '`Tools/tracemalloc/bench.py --help`.']
    notes = [r for r in bench.rows if r['note'] and r['note'] != 'error']
    if notes or bench.notes or bench.errors:
        md += ['', '## Notes', '']
        md += ['- %s: %s' % (r['metric'], r['note']) for r in notes]
        md += ['- %s' % n for n in bench.notes]
        md += ['- ERROR %s' % e.replace('\n', '\n  ') for e in bench.errors]
    return '\n'.join(md) + '\n'


def version_of(python):
    try:
        return subprocess.run([python, '-VV'], capture_output=True, text=True,
                              env=child_env(), timeout=60).stdout.strip()
    except OSError as exc:
        return 'unavailable: %s' % exc


def loadavg():
    try:
        return '%.2f' % os.getloadavg()[0]
    except OSError:
        return '?'


def allowed_cpus():
    try:
        return os.sched_getaffinity(0)
    except AttributeError:
        return set()


def calibrate_cpus():
    """{cpu: seconds} for a short CPU-bound loop pinned to each allowed
    CPU (the best of 3), or {} where affinity cannot be set."""
    cpus = allowed_cpus()
    if len(cpus) < 2:
        return {}
    times = {}
    try:
        for cpu in sorted(cpus):
            os.sched_setaffinity(0, {cpu})
            best = None
            for _ in range(3):
                t0 = time.process_time()
                sum(i * i for i in range(300_000))
                t = time.process_time() - t0
                best = t if best is None else min(best, t)
            times[cpu] = best
    finally:
        os.sched_setaffinity(0, cpus)
    return times


def parse_args(argv):
    p = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        epilog=__doc__.split('\n\n', 1)[1] % textwrap.fill(
            ', '.join(WORKLOAD_NAMES), 76, initial_indent='  ',
            subsequent_indent='  '),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--fork', required=True, help='the fork interpreter')
    p.add_argument('--upstream', required=True,
                   help='the unpatched base interpreter')
    p.add_argument('--out', default='build/bench',
                   help='directory for results.json and results.md '
                   '(default: %(default)s)')
    p.add_argument('--quick', action='store_true',
                   help='smoke test: 2 repetitions, smaller workloads')
    p.add_argument('--ft', action='store_true',
                   help='the free-threaded builds (make bench-ft): run only '
                   'the overhead at 1 frame and the threads section, with '
                   'the targets of the free-threaded build')
    p.add_argument('--reps', type=int,
                   help='repetitions: overhead pairs, and untraced pairs '
                   'of children, of three pairs each (default 5, 2 with '
                   '--quick; upstream\'s overhead pairs: at most 3)')
    p.add_argument('--only', metavar='NAME[,NAME...]',
                   help='run only these sections (%s) and/or workloads (%s); '
                   'naming only workloads runs untraced, overhead and scaling '
                   '(with --ft: overhead and threads) with them' % (
                       ', '.join(SECTIONS), ', '.join(WORKLOAD_NAMES)))
    p.add_argument('--cpu', default='auto', metavar='N|auto|none',
                   help='the CPU to pin the single-threaded sections to: a '
                   'number, auto (the fastest of a calibration; the '
                   'default) or none')
    a = p.parse_args(argv)
    if a.cpu not in ('auto', 'none'):
        try:
            a.cpu = int(a.cpu)
        except ValueError:
            p.error('--cpu: expected a CPU number, auto or none, got %r'
                    % a.cpu)
    if a.reps is None:
        a.reps = 2 if a.quick else 5
    if a.reps < 1:
        p.error('--reps must be >= 1')
    a.upstream_pairs = min(a.reps, 3)
    a.scale = 0.4 if a.quick else 1.0
    a.mem_reps = 1 if a.quick else 3
    a.scaling_reps = 1 if a.quick else 3
    ncpu = len(allowed_cpus()) or os.cpu_count() or 1
    a.nproc = ncpu
    a.nmax = max(2, ncpu)
    if isinstance(a.cpu, int) and a.cpu not in allowed_cpus():
        p.error('--cpu: CPU %d is not one this process may run on (%s)'
                % (a.cpu, ', '.join(map(str, sorted(allowed_cpus())))))
    default = FT_SECTIONS if a.ft else DEFAULT_SECTIONS
    a.frames = FRAMES[:1] if a.ft else FRAMES
    a.names, a.sections = list(WORKLOAD_NAMES), list(default)
    if a.only:
        only = [s.strip() for s in a.only.split(',') if s.strip()]
        bad = [s for s in only if s not in SECTIONS + WORKLOAD_NAMES]
        if bad:
            p.error('--only: unknown name(s) %s' % ', '.join(bad))
        names = [s for s in only if s in WORKLOAD_NAMES]
        sections = [s for s in only if s in SECTIONS]
        a.names = names or a.names
        a.sections = sections or [s for s in default if s in (
            'untraced', 'overhead', 'scaling', 'threads')]
    for path in (a.fork, a.upstream):
        if not os.access(path, os.X_OK):
            p.error('not an executable: %s' % path)
    return a


def main(argv):
    if argv[:1] == ['--child']:
        child_main(argv[1], argv[2])
        return 0
    args = parse_args(argv)
    sys.stdout.reconfigure(errors='backslashreplace')
    meta = {
        'date': time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime()),
        'command': ' '.join(shlex.quote(x) for x in
                            ['python3', os.path.relpath(__file__)] + argv),
        'fork': args.fork, 'upstream': args.upstream,
        'fork_version': version_of(args.fork),
        'upstream_version': version_of(args.upstream),
        'driver': sys.version.split()[0],
        'platform': platform.platform(), 'nproc': args.nproc,
        'loadavg_start': loadavg(), 'reps': args.reps,
        'upstream_pairs': args.upstream_pairs, 'quick': args.quick,
        'ft': args.ft,
        'mem_reps': args.mem_reps, 'scaling_reps': args.scaling_reps,
        'scale': args.scale, 'workloads': args.names,
        'sections': args.sections, 'clock': 'process_time (scaling: wall)',
    }
    bench = Bench(args)
    bench.run()
    meta['loadavg_end'] = loadavg()
    busy = [x for x in (meta['loadavg_start'], meta['loadavg_end'])
            if x != '?' and float(x) > 0.5 * args.nproc]
    if busy:
        bench.notes.append('machine busy (load average %s -> %s on %d CPUs): '
                           'timings are noisy and the scaling figures '
                           'understate what the fork can do' % (
                               meta['loadavg_start'], meta['loadavg_end'],
                               args.nproc))
    meta['elapsed_s'] = round(bench.elapsed, 1)
    meta['cpu'] = bench.cpu
    meta['cpu_calibration_s'] = {str(k): round(v, 4)
                                 for k, v in bench.calibration.items()}

    table = text_table(bench.rows)
    print()
    print('fork:     %s\nupstream: %s' % (meta['fork_version'],
                                          meta['upstream_version']))
    print('medians ± median absolute deviation; %d reps; load average %s '
          '-> %s; %s; %.0f s\n' % (args.reps, meta['loadavg_start'],
                                   meta['loadavg_end'],
                                   pinned_text(meta['cpu'],
                                               meta['cpu_calibration_s']),
                                   bench.elapsed))
    print(table)
    for r in bench.rows:
        if r['note'] and r['note'] != 'error':
            print('note: %s: %s' % (r['metric'], r['note']))
    for n in bench.notes:
        print('note: %s' % n)
    missed = [r['metric'] for r in bench.rows if r['met'] is False]
    print('\ntargets: %d met, %d missed; %d measurement(s) failed' % (
        sum(r['met'] is True for r in bench.rows), len(missed),
        len(bench.errors)))
    for e in bench.errors:
        print('ERROR %s' % e, file=sys.stderr)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, 'results.json'), 'w',
              encoding='utf-8') as f:
        json.dump({'meta': meta, 'rows': bench.rows, 'notes': bench.notes,
                   'errors': bench.errors,
                   'raw': bench.raw}, f, indent=1)
        f.write('\n')
    with open(os.path.join(args.out, 'results.md'), 'w',
              encoding='utf-8') as f:
        f.write(markdown(bench, meta))
    print('wrote %s and %s' % (os.path.join(args.out, 'results.json'),
                               os.path.join(args.out, 'results.md')))
    return 1 if bench.errors else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
