"""CPU seconds of the operator's light commands (interpreter start, imports, the command), best of N, beside the CPU
of `python -c "import torch"` in the same run: what a user waits for when typing `triage-node worklist`.

This replaces a test with a time bound (speed belongs in benchmarks); the deterministic guard is
tests/test_cli.py::test_light_commands_import_no_torch_monai_lab_or_web_stack.

    .venv/bin/python bench/cli_start.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from common import ROOT, write_result


def cpu_seconds(argv: list[str], cwd: Path) -> float:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(argv, cwd=cwd, capture_output=True, check=False, timeout=120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        conf = Path(tmp) / "etc" / "config.yaml"
        conf.parent.mkdir()
        conf.write_text("storage:\n  database_url: sqlite:///var/t.db\n  spool_dir: var/spool\n")
        cli = [sys.executable, "-m", "triage_node.cli"]
        subprocess.run([*cli, "worklist", "--config", str(conf)], cwd=ROOT, capture_output=True, check=True)
        commands = {
            "check-config": [*cli, "check-config", "--config", str(conf)],
            "worklist --json": [*cli, "worklist", "--json", "--config", str(conf)],
            "resend 1": [*cli, "resend", "1", "--config", str(conf)],
            "conformance": [*cli, "conformance"],
            "user list": [*cli, "user", "list", "--config", str(conf)],
            "(python -c 'import torch')": [sys.executable, "-c", "import torch"],
        }
        rows = []
        for name, command in commands.items():
            best = min(cpu_seconds(command, ROOT) for _ in range(args.repeats))
            rows.append({"command": name, "cpu_s_best": round(best, 3)})
            print(f"{name:30s} {best:6.3f} s CPU (best of {args.repeats})", flush=True)
    if not args.no_write:
        print(f"wrote {write_result('cli_start', {'repeats': args.repeats, 'rows': rows})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
