"""``triage-lab``: the model lab, kept out of the daemon.

synth | train | evaluate | tune-postprocess | lr-find | train-mr | evaluate-mr | tune-mr | export | render-test.
The daemon (``triage-node``) never imports this package; tests/test_import_boundary.py holds that line.
"""

from __future__ import annotations

import argparse
import logging
import sys


def build_parser() -> argparse.ArgumentParser:
    from triage_lab.render2.evaluate import register as register_render_test
    from triage_lab.synth.synth_commands import register as register_synth
    from triage_lab.training.ct_commands import register as register_training
    from triage_lab.training.export import register as register_export
    from triage_lab.training.mr_commands import register as register_mr_training

    p = argparse.ArgumentParser(prog="triage-lab", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    register_synth(sub)
    register_training(sub)
    register_mr_training(sub)
    register_export(sub)
    register_render_test(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
