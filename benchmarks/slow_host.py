"""Runs a command as a host FACTOR times slower would: the command's process group runs for a slice, then is
stopped (SIGSTOP) for FACTOR - 1 slices and resumed (SIGCONT), until it exits. Time budgets (`kseg train
--time-budget`, `kseg demo`'s) read the wall clock, so they see the slower host; what the command computes does
not change. Hosts of one machine kind differ up to 6x in training speed (../shared/FACTS.md: AVX-512 or not).

    python benchmarks/slow_host.py 6 -- kseg demo --out /tmp/demo-slow

Prints the command's exit status and wall-clock seconds; exits with the command's status. Stopping costs a little
on top (measured: 7.3x per training step for FACTOR 6 with the default 20 ms slice).
"""

import argparse
import os
import signal
import subprocess
import sys
import time


def run(command: list[str], factor: float, slice_seconds: float = 0.02) -> tuple[int, float]:
    """(exit status, wall-clock seconds) of `command` run at 1 / `factor` of this host's speed."""
    started = time.monotonic()
    process = subprocess.Popen(command, start_new_session=True)
    while process.poll() is None:
        time.sleep(slice_seconds)
        try:
            os.killpg(process.pid, signal.SIGSTOP)
            time.sleep(slice_seconds * (factor - 1))
            os.killpg(process.pid, signal.SIGCONT)
        except ProcessLookupError:
            break
    return process.wait(), time.monotonic() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("factor", type=float, help="how many times slower (> 1)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the command, after --")
    parser.add_argument("--slice", type=float, default=0.02, help="seconds the command runs between stops")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if args.factor <= 1 or not command:
        parser.error("give a factor above 1 and a command")
    status, seconds = run(command, args.factor, args.slice)
    print(f"slow_host x{args.factor:g}: exit {status}, {seconds:.0f} s wall clock", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
