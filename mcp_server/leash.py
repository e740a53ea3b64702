"""Run a command that dies with its parent: `python -I leash.py --signal N --parent PID -- ARGV...`

Sets Linux's parent-death signal (prctl PR_SET_PDEATHSIG) so that the kernel sends signal N
to this process when the thread that started it ends, however it ends (SIGKILL included),
then execs ARGV in place: same pid, same start time, so the caller's record of the child
stays true. If the parent is already gone when the leash starts, ARGV never runs. SIGTERM
and SIGINT are reset to their defaults first, since a parent that ignores them (the run
supervisor does) would otherwise pass that on through exec.

Run by path with `-I`, with only the standard library, in whatever environment the command
gets. On systems without prctl it only execs; the caller's own checks remain.
"""

import ctypes
import ctypes.util
import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(args: list[str]) -> int:
    if len(args) < 6 or args[0] != "--signal" or args[2] != "--parent" or args[4] != "--":
        print("usage: leash.py --signal N --parent PID -- ARGV...", file=sys.stderr)
        return 2
    sig, parent, argv = int(args[1]), int(args[3]), args[5:]
    for name in ("SIGTERM", "SIGINT"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        if libc.prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            print(f"leash: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
            return 126
    if os.getppid() != parent:  # the parent died before the death signal was armed
        return 128 + sig
    try:
        os.execvp(argv[0], argv)  # noqa: S606 - an argv list, as every command here
    except OSError as exc:
        print(f"leash: cannot run {argv[0]}: {exc.strerror}", file=sys.stderr)
        return 127
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
