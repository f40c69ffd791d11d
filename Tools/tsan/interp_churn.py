"""Create and destroy subinterpreters from several threads, without tracemalloc.

Usage: python interp_churn.py [--seconds N] [--threads N]

Used to check that a ThreadSanitizer report seen in the fork's stress runs
(make sanitize VARIANT=tsan) reproduces on the upstream base built the same
way (make VARIANT=upstream-tsan), where tracemalloc cannot even run in a
subinterpreter: only such reports may be suppressed in
tracemalloc_suppressions.txt.  Run it under both builds and compare the
"SUMMARY: ThreadSanitizer" lines.
"""

import argparse
import gc
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


def churn(deadline, config):
    while time.monotonic() < deadline:
        interp = _interpreters.create(config)
        try:
            excinfo = _interpreters.exec(interp, CODE)
            if excinfo is not None:
                raise RuntimeError(excinfo.errdisplay)
        finally:
            _interpreters.destroy(interp)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--seconds', type=float, default=30)
    parser.add_argument('--threads', type=int, default=4)
    args = parser.parse_args()
    deadline = time.monotonic() + args.seconds
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
