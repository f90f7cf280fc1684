"""`make bench`: run every benchmarks/bench_*.py and print one JSON document.

Each benchmark measures shopspc against an in-tree naive per-point Python
baseline in the same run and reports ratios (the figures that matter) and
absolute rates (information only: the machine is shared). Nothing here is a
test; no figure is asserted.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
import time

import benchmarks


def main(argv: list[str] | None = None) -> int:
    """Run the named benchmarks (default: all) and print their results as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    names = sorted(
        m.name for m in pkgutil.iter_modules(benchmarks.__path__) if m.name.startswith("bench_")
    )
    if argv:
        names = [n for n in names if n in argv or n.removeprefix("bench_") in argv]
    results = {}
    for name in names:
        module = importlib.import_module(f"benchmarks.{name}")
        start = time.perf_counter()
        print(f"# running {name} …", file=sys.stderr, flush=True)
        results[name] = module.main([])
        results[name]["wall_seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
