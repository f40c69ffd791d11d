#!/usr/bin/env python3
"""Run a slice of CPython's test suite on the fork and on the base, and
report every test that passes on the base but fails on the fork.

Usage: scripts/regress.py --fork PYTHON --base PYTHON [--out DIR] [TEST ...]

Both interpreters must be built the same way (make regress uses
VARIANT=debug and VARIANT=upstream-debug).  Each runs the tests with
CPython's own runner and a JUnit XML report; test cases are compared by
name.  Prints one line per regression, then a summary line, and exits 1 if
there is any regression (or if a run produced no report), else 0.
"""

import argparse
import os
import subprocess
import sys
import xml.etree.ElementTree as ET

DEFAULT_TESTS = ['test_tracemalloc', 'test_embed', 'test_capi',
                 'test_interpreters', 'test__interpreters', 'test_threading',
                 'test_gc', 'test_sys', 'test_concurrent_futures', 'test_os']


def results(report):
    """Map 'module.Class.test' to 'pass', 'fail' or 'skip'."""
    out = {}
    for case in ET.parse(report).getroot().iter('testcase'):
        kinds = {child.tag for child in case}
        name = f'{case.get("classname", "")}.{case.get("name", "")}'
        if kinds & {'failure', 'error'}:
            out[name] = 'fail'
        elif 'skipped' in kinds:
            out[name] = 'skip'
        else:
            out[name] = 'pass'
    return out


def run(python, tests, report, jobs):
    cmd = [python, '-m', 'test', f'-j{jobs}', '--timeout=1800',
           '--junit-xml', report, *tests]
    print('+', ' '.join(cmd), flush=True)
    rc = subprocess.call(cmd, stdout=subprocess.DEVNULL)
    if not os.path.exists(report):
        sys.exit(f'regress: {python} produced no report (exit {rc})')
    return rc


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--fork', required=True)
    parser.add_argument('--base', required=True)
    parser.add_argument('--out', default='build/regress')
    parser.add_argument('--jobs', type=int, default=os.cpu_count() or 1)
    parser.add_argument('--keep-base', action='store_true',
                        help="reuse OUT/base.xml from an earlier run (the "
                             "base does not change between runs)")
    parser.add_argument('tests', nargs='*', default=DEFAULT_TESTS)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    reports = {}
    for label, python in (('base', args.base), ('fork', args.fork)):
        reports[label] = os.path.join(args.out, f'{label}.xml')
        if label == 'base' and args.keep_base and os.path.exists(
                reports[label]):
            print(f'reusing {reports[label]}')
            continue
        run(python, args.tests, reports[label], args.jobs)
    base = results(reports['base'])
    fork = results(reports['fork'])

    regressions = sorted(name for name, outcome in base.items()
                         if outcome == 'pass' and fork.get(name) == 'fail')
    missing = sorted(name for name, outcome in base.items()
                     if outcome == 'pass' and name not in fork)
    for name in regressions:
        print(f'REGRESSION {name}: passes on the base, fails on the fork')
    for name in missing:
        print(f'MISSING {name}: passes on the base, did not run on the fork')
    fork_only = sum(1 for name in fork if name not in base)
    print(f'regress: {len(base)} base test cases, {len(fork)} fork test '
          f'cases ({fork_only} only on the fork); '
          f'{len(regressions)} regressions, {len(missing)} missing')
    return 1 if regressions or missing else 0


if __name__ == '__main__':
    sys.exit(main())
