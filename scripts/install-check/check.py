"""Checks an installed tmfork from inside a venv; run by
scripts/check-install.sh as

    v/bin/python -X tracemalloc=25 check.py REPO   (a copy, in the venv's dir)

where REPO is the repository's root, which the interpreter must not use.
Prints one line per check and exits non-zero on the first failure.
"""

import _interpreters
import os
import sys
import sysconfig
import tracemalloc

import tmtrack  # the C extension, built with python3.13-config

LIMIT = 25
DOMAIN = 4242            # a domain of the C API, apart from Python's 0
SUB_CODE = """if True:
    import sys, tracemalloc, tmtrack
    assert tracemalloc.is_tracing(), "not tracing"
    assert tracemalloc.get_traceback_limit() == {limit}, "traceback limit"
    data = [bytearray(1000) for _ in range(100)]
    ours = [t for t in tracemalloc.take_snapshot().traces
            if t.traceback[0].filename == "<string>" and t.size >= 1000]
    assert len(ours) >= 100, f"{{len(ours)}} traces of its own blocks"
    assert tmtrack.track({domain}, {address}, 8192) == 0
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(True, {domain})])
    assert [t.size for t in snapshot.traces] == [8192], snapshot.traces
"""


def check(what, ok, detail=''):
    print(('ok   ' if ok else 'FAIL ') + what + (f': {detail}' if detail
                                                 and not ok else ''))
    if not ok:
        sys.exit(1)


def domain_traces():
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.DomainFilter(True, DOMAIN)])
    return snapshot.traces


def main():
    repo = os.path.realpath(sys.argv[1])
    check('runs in a venv of the installed prefix',
          sys.prefix != sys.base_prefix
          and sysconfig.get_config_var('prefix') == sys.base_prefix,
          f'prefix {sys.prefix}, base {sys.base_prefix}, configured '
          f'{sysconfig.get_config_var("prefix")}')
    used = [p for p in sys.path + [tracemalloc.__file__, tmtrack.__file__]
            if os.path.realpath(p).startswith(repo + os.sep)]
    check('uses nothing of the repository', not used, used)
    check(f'-X tracemalloc={LIMIT} traces the main interpreter',
          tracemalloc.is_tracing()
          and tracemalloc.get_traceback_limit() == LIMIT)

    address = 0x10000
    check('PyTraceMalloc_Track() from the C extension',
          tmtrack.track(DOMAIN, address, 4096) == 0)
    traces = domain_traces()
    check('the tracked block is traced, with its traceback',
          [t.size for t in traces] == [4096]
          and traces[0].traceback[0].filename == __file__, traces)
    check('PyTraceMalloc_Untrack()', tmtrack.untrack(DOMAIN, address) == 0
          and not domain_traces())

    for n in (1, 2):
        interp = _interpreters.create()
        config = _interpreters.get_config(interp)
        check(f'subinterpreter {n} is isolated (own GIL and obmalloc)',
              config.gil == 'own' and not config.use_main_obmalloc, config)
        sub_address = 0x20000 * n
        err = _interpreters.run_string(interp, SUB_CODE.format(
            limit=LIMIT, domain=DOMAIN, address=sub_address))
        check(f'isolated subinterpreter {n} traces its own blocks and its '
              'C extension\'s', err is None, err and err.formatted)
        mine = tracemalloc.take_snapshot().traces
        check(f'... none of which is in the main interpreter\'s traces',
              not [t for t in mine if t.traceback[0].filename == '<string>']
              and not domain_traces())
        _interpreters.destroy(interp)


if __name__ == '__main__':
    main()
