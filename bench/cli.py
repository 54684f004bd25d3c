"""`python -m bench [FIGURE ...] [OPTIONS]`: run benchmarks, then print one summary line per figure.

No FIGURE runs the default set, as `make bench` does. OPTIONS apply to a single named FIGURE, e.g.
`python -m bench fleet --nodes 10000 --hold 600`; `python -m bench FIGURE --help` lists them.
Every run prints the machine first: a figure means little without the machine it ran on.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
from types import ModuleType

from bench import chain, fleet, gatetime, recovery, relay, throughput
from bench.figures import Figure, machine
from bench.stacks import RUN_ID
from harness.stack.procs import reap_all

FIGURES: dict[str, ModuleType] = {"relay": relay, "throughput": throughput, "fleet": fleet, "recovery": recovery,
                                  "chain": chain, "gates": gatetime}
# The default set holds the full 10,000-node fleet for 2 minutes, not 10: README says how to run it all.
DEFAULT_ARGS = {"fleet": ["--hold", "120"]}


def _parse(argv: list[str]) -> dict[str, argparse.Namespace]:
    names = [a for a in argv if a in FIGURES]
    options = [a for a in argv if a not in FIGURES]
    if not names and options:
        if options[0] in ("-h", "--help"):
            print(__doc__ + f"\nFIGURES: {', '.join(FIGURES)}")
            raise SystemExit(0)
        raise SystemExit(f"python -m bench: options apply to one figure: name it first, e.g. "
                         f"python -m bench fleet {' '.join(options)} (figures: {', '.join(FIGURES)})")
    if options and len(names) > 1:
        raise SystemExit("python -m bench: options apply to one figure at a time: name exactly one")
    parsed = {}
    for name in names or list(FIGURES):
        parser = argparse.ArgumentParser(prog=f"python -m bench {name}", description=FIGURES[name].__doc__)
        FIGURES[name].add_args(parser)
        parsed[name] = parser.parse_args(options if names else DEFAULT_ARGS.get(name, []))
    return parsed


def main(argv: list[str] | None = None) -> None:
    parsed = _parse(sys.argv[1:] if argv is None else argv)
    print(machine(), flush=True)
    print(f"run {RUN_ID}: stacks and logs in reports/{RUN_ID}/", flush=True)
    figures: list[Figure] = []
    for name, args in parsed.items():
        module = FIGURES[name]
        print(f"\n== {name}: {' '.join(str(module.__doc__).split())[:160]}", flush=True)
        started = time.monotonic()
        try:
            figures += asyncio.run(module.run(args))
        except Exception as exc:  # one broken figure must not hide the others' results
            print(f"  {name} failed: {type(exc).__name__}: {exc}", flush=True)
            figures.append(Figure(f"{name}.error", float("nan"), "", f"{type(exc).__name__}: {exc}"[:300]))
        finally:
            if leaked := reap_all():
                print(f"  stopped processes {name} left running: {leaked}", flush=True)
        print(f"  ({time.monotonic() - started:.0f}s)", flush=True)
    print()
    for fig in figures:
        print(fig.line(), flush=True)
    sys.exit(1 if any(f.name.endswith(".error") for f in figures) else 0)
