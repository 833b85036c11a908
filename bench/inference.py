"""Inference: slices/s per model on its production input (256x256 head CT, SWI, DWI), torch threads 1 and 2, through
the same ``Analyzer`` the daemon loads (card, sha256, weights), whole ``analyze()`` (pre- and post-processing, Grad-CAM,
atlas location) included. Three paths: eager float32; eager under bfloat16 autocast (``models.precision: bf16``,
what ``auto`` picks on a CPU with AMX / AVX512-BF16; skipped on a CPU without native bf16, where it is emulated); and
the int8 ONNX Runtime export (``models.precision: int8``; for models whose card has one, see ``triage-lab export``).
Each row also gives the speed-up over eager float32 at the same thread count.

    .venv/bin/python bench/inference.py [--slices 40] [--repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import numpy as np
from common import ROOT, median, write_result


def volume_for(n_slices: int) -> Any:
    """A Volume built the way the pipeline builds it, from a synthetic hemorrhage case written as DICOM."""
    from pydicom import dcmread
    from time_to_flag import hemorrhage_series

    from triage_node.series.geometry import build_volume, pixels, plan

    folder = hemorrhage_series(n_slices, 256, 1)[0]
    slices = plan([dcmread(p) for p in sorted(folder.glob("*.dcm"))])
    planes = np.stack([pixels(s) for s in slices])
    return build_volume(slices, planes, np.ones(len(slices), bool), planes_are_kept=True)


def volume_for_model(name: str, n_slices: int) -> Any:
    """The input the model sees in production: MR DWI for infarct, SWI for microbleeds, head CT otherwise."""
    if name == "infarct":
        from triage_lab.synth.mr import dwi_volume, make_dwi_case

        return dwi_volume(make_dwi_case(11))
    if name == "cmb":
        from triage_lab.synth.mr import make_swi_case, swi_volume

        return swi_volume(make_swi_case(11))
    return volume_for(n_slices)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slices", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--device", default="cpu", help="models.device (cuda: GPU rows, written to inference_cuda.json)")
    args = ap.parse_args(argv)
    from triage_node.inference.precision import check_device, cuda_bf16, set_tf32_policy
    from triage_node.inference.registry import list_models, load_analyzer, read_card

    on_gpu = check_device(args.device).type != "cpu"
    set_tf32_policy()

    models = list_models(ROOT / "models")
    usable = [m for m in models if m.status == "ok"]
    rows: list[dict[str, Any]] = []
    if not usable:
        print("no usable model in models/ (cards with verified weights): nothing to measure")
    from triage_node.inference.precision import native_bf16

    paths = {"fp32": "torch eager fp32"}
    if (cuda_bf16() if on_gpu else native_bf16()):
        paths["bf16"] = "torch eager bf16 autocast"
    for m in usable:
        volume = volume_for_model(m.name, args.slices)
        n = int(volume.pixels.shape[0])
        model_paths = dict(paths)
        if "int8" in read_card(ROOT / "models", m.name).exports and not on_gpu:
            model_paths["int8"] = "onnxruntime int8 export"
        eager: dict[int, float] = {}
        for precision, path in model_paths.items():
            for threads in (1,) if on_gpu else (1, 2):
                card = read_card(ROOT / "models", m.name)
                analyzer = load_analyzer(card, threads=threads, device=args.device, precision=precision)
                analyzer.analyze(volume)  # warm-up: first call allocates and picks kernels
                times = []
                for _ in range(args.repeats):
                    t0 = time.perf_counter()
                    analyzer.analyze(volume)
                    times.append(time.perf_counter() - t0)
                s = median(times)
                eager.setdefault(threads, s)  # fp32 runs first
                rows.append({"model": m.name, "version": m.version, "path": path, "threads": threads,
                             "device": args.device,
                             "slices": n, "seconds_median": round(s, 3), "slices_per_s": round(n / s, 1),
                             "x_eager_fp32": round(eager[threads] / s, 2)})
                print(f"{m.name:14s} {precision:5s} {threads} thread(s): {n / s:7.1f} slices/s ({s:.2f} s, {n} slices, "
                      f"x{eager[threads] / s:.2f} of eager fp32)", flush=True)
    if not args.no_write:
        path = write_result("inference" if not on_gpu else "inference_cuda", {
            "models_found": [{"name": m.name, "status": m.status, "detail": m.detail} for m in models],
            "note": ("" if usable else "no model weights in models/ when this ran; ")
            + (("bf16: native on this GPU" if cuda_bf16() else "bf16 skipped: not native on this GPU") if on_gpu
               else "bf16: native on this CPU" if native_bf16() else "bf16 skipped: not native on this CPU"),
            "rows": rows,
        })
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
