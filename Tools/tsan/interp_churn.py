"""Create and destroy subinterpreters from several threads, without tracemalloc.

Usage: python interp_churn.py [--seconds N] [--threads N]
                              [--in-step [--intern] | --import MODULE]

Used to check that a ThreadSanitizer report seen in the fork's stress runs
(make sanitize VARIANT=tsan) reproduces on the upstream base built the same
way (make VARIANT=upstream-tsan), where tracemalloc cannot even run in a
subinterpreter: only such reports may be suppressed in
tracemalloc_suppressions.txt.  Run it under both builds and compare the
"SUMMARY: ThreadSanitizer" lines.

With --in-step, each thread keeps one subinterpreter instead (isolated and
legacy in turn), and all of them run the same short code at the same time,
round after round.  With --intern as well, the code of each round has string
constants that no interpreter has interned yet (legacy subinterpreters share
the main interpreter's interned strings).

With --import MODULE, each round every thread creates a new isolated
subinterpreter, and all of them import MODULE at the same time (the first
import of an extension module in an interpreter runs its exec function).
"""

import argparse
import gc
import itertools
import threading
import time

import _interpreters

CODE = """if 1:
    import json, struct, threading
    data = json.dumps({str(i): [i, struct.pack('i', i)].__repr__()
                       for i in range(200)})
    assert json.loads(data)
    t = threading.Thread(target=lambda: [str(i) for i in range(1000)])
    t.start()
    t.join()
    # code with fresh string constants: legacy interpreters share the
    # interned strings
    for i in range(20):
        exec(compile(f"name_{i} = 'constant_{i}'", '<churn>', 'exec'))
"""

INTERN_CONSTANTS = 100


def churn(deadline, config):
    while time.monotonic() < deadline:
        interp = _interpreters.create(config)
        try:
            excinfo = _interpreters.exec(interp, CODE)
            if excinfo is not None:
                raise RuntimeError(excinfo.errdisplay)
        finally:
            _interpreters.destroy(interp)


def in_step_code(n, intern):
    """The code of round n; with intern, its string constants are new."""
    constants = [f"v{i} = 'round_{n}_constant_{i}'"
                 for i in range(INTERN_CONSTANTS if intern else 0)]
    return '\n'.join([*constants, "data = [str(i) for i in range(2000)]"])


def in_step_worker(barrier, state, config):
    interp = _interpreters.create(config)
    try:
        while True:
            barrier.wait()      # its action sets the code of the round
            if state['code'] is None:
                return
            excinfo = _interpreters.exec(interp, state['code'])
            if excinfo is not None:
                raise RuntimeError(excinfo.errdisplay)
    except BaseException:
        barrier.abort()
        raise
    finally:
        _interpreters.destroy(interp)


def in_step(deadline, nthreads, intern):
    """The --in-step mode; return the number of rounds."""
    rounds = itertools.count()
    state = {}

    def next_round():
        state['code'] = (in_step_code(next(rounds), intern)
                         if time.monotonic() < deadline else None)

    barrier = threading.Barrier(nthreads, action=next_round)
    threads = [threading.Thread(target=in_step_worker,
                                args=(barrier, state,
                                      ('isolated', 'legacy')[i % 2]))
               for i in range(nthreads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return next(rounds)


def import_in_step(deadline, nthreads, module):
    """The --import mode; return the number of rounds."""
    rounds = 0
    while time.monotonic() < deadline:
        interps = [_interpreters.create('isolated') for _ in range(nthreads)]
        barrier = threading.Barrier(nthreads)

        def run(interp):
            barrier.wait()
            excinfo = _interpreters.exec(interp, f'import {module}')
            if excinfo is not None:
                raise RuntimeError(excinfo.errdisplay)

        threads = [threading.Thread(target=run, args=(interp,))
                   for interp in interps]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for interp in interps:
            _interpreters.destroy(interp)
        rounds += 1
    return rounds


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seconds', type=float, default=30)
    parser.add_argument('--threads', type=int, default=4)
    parser.add_argument('--in-step', action='store_true',
                        help='keep one subinterpreter per thread, all '
                             'running the same code at the same time')
    parser.add_argument('--intern', action='store_true',
                        help='with --in-step: code with new string '
                             'constants in each round')
    parser.add_argument('--import', dest='module', metavar='MODULE',
                        help='each round, new subinterpreters import MODULE '
                             'at the same time')
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
    if args.intern and not args.in_step:
        parser.error('--intern requires --in-step')
    if args.module and args.in_step:
        parser.error('--import and --in-step are exclusive')
    if args.in_step:
        rounds = in_step(deadline, args.threads, args.intern)
        print(f'interp_churn: done, {rounds} rounds')
        return
    if args.module:
        rounds = import_in_step(deadline, args.threads, args.module)
        print(f'interp_churn: done, {rounds} rounds')
        return
    threads = [threading.Thread(target=churn,
                                args=(deadline, ('isolated', 'legacy')[i % 2]))
               for i in range(args.threads)]
    for thread in threads:
        thread.start()
    while time.monotonic() < deadline:
        import importlib
        importlib.import_module('decimal')
        gc.collect()
        time.sleep(0.01)
    for thread in threads:
        thread.join()
    print('interp_churn: done')


if __name__ == '__main__':
    main()
