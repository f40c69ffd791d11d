#!/usr/bin/env python3
"""Run CPython test modules with its own runner and count individual tests.

Usage: scripts/run-tests.py PYTHON TEST [TEST ...] [-- REGRTEST-OPTIONS]

Runs `PYTHON -m test` on the given modules, with a JUnit XML report, and
ends with one line counted from that report (test cases, not files):

    N passed, N failed, N skipped

Exits non-zero when any test failed or errored, or when the runner itself
failed (a crash, a module that could not be imported, no report).
"""

import os
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET


def count(report):
    passed = failed = skipped = 0
    failures = []
    for case in ET.parse(report).getroot().iter('testcase'):
        kinds = {child.tag for child in case}
        name = f'{case.get("classname", "")}.{case.get("name", "")}'
        if kinds & {'failure', 'error'}:
            failed += 1
            failures.append(name)
        elif 'skipped' in kinds:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped, failures


def main(argv):
    if len(argv) < 2 or argv[0] in ('-h', '--help'):
        print(__doc__)
        return 0 if argv and argv[0] in ('-h', '--help') else 2
    python, rest = argv[0], argv[1:]
    extra = []
    if '--' in rest:
        i = rest.index('--')
        rest, extra = rest[:i], rest[i + 1:]
    jobs = os.environ.get('JOBS', str(os.cpu_count() or 1))
    with tempfile.TemporaryDirectory() as tmp:
        report = os.path.join(tmp, 'junit.xml')
        cmd = [python, '-m', 'test', f'-j{jobs}', '--timeout=1200',
               '--junit-xml', report, *extra, *rest]
        print('+', ' '.join(cmd), flush=True)
        rc = subprocess.call(cmd)
        if not os.path.exists(report):
            print(f'no report from the test runner (exit {rc})')
            print('0 passed, 1 failed, 0 skipped')
            return 1
        passed, failed, skipped, failures = count(report)
    for name in failures:
        print(f'FAILED {name}')
    if rc and not failed:
        # The runner failed outside any test case: a crash, an import error.
        failed = 1
        print(f'the test runner exited with {rc} outside any test case')
    print(f'{passed} passed, {failed} failed, {skipped} skipped')
    return 1 if failed or rc else 0


if __name__ == '__main__':
    sys.exit(main(sys.argv[1:]))
