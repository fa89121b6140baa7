"""Run some tests against chosen mutants, quickly (after ``make mutation`` has generated ``mutants/``).

    python tools/killcheck.py tests/test_ntk.py::test_name lorabook.ntk.x_svt__mutmut_3 lorabook.ntk.x_svt__mutmut_4

Imports torch and the mutated package once, then forks one pytest run per mutant (as mutmut does), with the mutant
selected by ``MUTANT_UNDER_TEST``. Prints ``KILLED`` or ``SURVIVED`` per mutant, after checking that the tests pass
unmutated. Useful to check that a new test kills the survivors it was written for before a mutmut re-run confirms
it; edits no source file.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__)
        return 2
    target, names = argv[0], argv[1:]
    target = str((Path.cwd() / target).resolve()) if "::" not in target else (
        str((Path.cwd() / target.split("::")[0]).resolve()) + "::" + target.split("::", 1)[1])
    mutants = ROOT / "mutants"
    if not (mutants / "lorabook").is_dir():
        print("no mutants/ folder: run `make mutation` (or mutmut run) first")
        return 2
    os.chdir(mutants)
    sys.path.insert(0, str(mutants))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import pytest
    import torch  # noqa: F401  (heavy imports once, before forking)

    import lorabook  # noqa: F401

    args = ["-q", "-x", "-p", "no:randomly", "-p", "no:cacheprovider", "-p", "no:xdist", "-W", "ignore", target]
    log = Path(f"/tmp/killcheck.{os.getpid()}.log")

    def run(name: str) -> int:
        pid = os.fork()
        if pid == 0:
            os.environ["MUTANT_UNDER_TEST"] = name
            fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            try:
                code = int(pytest.main(list(args)))
            except BaseException:
                code = 99
            os._exit(code)
        return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])

    rc = run("")
    if rc != 0:
        print(f"the tests fail unmutated (exit code {rc}):\n" + "".join(log.read_text().splitlines(True)[-20:]))
        return 1
    for name in names:
        rc = run(name)
        print(f"SURVIVED {name}" if rc == 0 else f"KILLED   {name} (exit code {rc})", flush=True)
    log.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
