"""Static int8 quantisation of a model's network for ``models.precision: int8`` (the lab side of the int8 path).

``triage-lab export NAME`` runs the model's own analyzer on calibration cases with the float network and records the
tensors the network is given there, so calibration sees exactly what production feeds it (windows, 2.5-D context, crop
grid, candidate patches). It then exports the float network to ONNX and quantises it statically with onnxruntime's
tools: QDQ format, int8 weights per output channel, uint8 activations, min-max ranges from the recorded inputs. The file
lands next to the weights, and the card's ``exports.int8`` holds its name, sha256 and how it was made. Calibration uses
validation seeds, never the held-out test seeds the card's figures come from. The daemon side (running the file) is
triage_node/inference/onnxrt.py.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from triage_node.inference.card import sha256_file
from triage_node.inference.onnxrt import OPSET


class Recorder:
    """Stands in for a torch network while calibration runs: forwards to it and keeps a sample of its inputs."""

    def __init__(self, net: Callable[[torch.Tensor], Any], keep: int, seed: int = 0) -> None:
        self.net = net
        self.keep = keep
        self.rng = np.random.default_rng(seed)
        self.samples: list[np.ndarray] = []
        self.seen = 0

    def eval(self) -> Recorder:
        return self

    def __call__(self, x: torch.Tensor) -> Any:
        arr = x.detach().float().cpu().numpy()
        for row in arr:  # reservoir sampling: every input row seen has the same chance to be kept
            self.seen += 1
            if len(self.samples) < self.keep:
                self.samples.append(row.copy())
            else:
                j = int(self.rng.integers(self.seen))
                if j < self.keep:
                    self.samples[j] = row.copy()
        return self.net(x)


def network_holder(analyzer: Any) -> Any:
    """The object whose ``net`` attribute is the analyzer's network (the analyzer, its segmenter or its detector)."""
    for attr in ("segmenter", "detector"):
        inner = getattr(analyzer, attr, None)
        if inner is not None and hasattr(inner, "net"):
            return inner
    if not hasattr(analyzer, "net"):
        raise TypeError(f"{type(analyzer).__name__} exposes no network to export")
    return analyzer


def export_int8(
    analyzer: Any, calibrate: Callable[[Any], None], out: Path, keep: int = 512, batch: int = 32
) -> dict[str, Any]:
    """Quantise ``analyzer``'s network to int8 with inputs recorded while ``calibrate(analyzer)`` runs; write ``out``.

    ``analyzer`` must have been built with precision ``fp32`` (calibration wants float inputs and a float network).
    Returns what the card's ``exports.int8`` records about the file.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    holder = network_holder(analyzer)
    torch_net = holder.net
    if not isinstance(torch_net, torch.nn.Module):
        raise TypeError("export needs the analyzer's torch network (build it with precision fp32)")
    recorder = Recorder(torch_net, keep)
    holder.net = recorder
    try:
        calibrate(analyzer)
    finally:
        holder.net = torch_net
    if not recorder.samples:
        raise ValueError("calibration gave the network no input")
    samples = np.stack(recorder.samples).astype(np.float32)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(samples[i : i + batch] for i in range(0, len(samples), batch))

        def get_next(self) -> dict[str, np.ndarray] | None:
            b = next(self.batches, None)
            return None if b is None else {"x": b}

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="triage-node-export-") as tmp:
        fp32, pre, q = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        torch_net.eval()
        with torch.no_grad():
            torch.onnx.export(  # the TorchScript exporter: no onnxscript dependency, every op here is supported
                torch_net, (torch.from_numpy(samples[:2]),), str(fp32), dynamo=False, opset_version=OPSET,
                input_names=["x"], dynamic_axes={"x": {0: "n"}},
            )
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        quantize_static(
            str(pre), str(q), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )
        tmp_out = out.with_name(out.name + ".tmp")
        tmp_out.write_bytes(q.read_bytes())
        tmp_out.replace(out)
    return {
        "file": out.name,
        "sha256": sha256_file(out),
        "format": f"ONNX opset {OPSET}, QDQ, int8 weights per output channel, uint8 activations (onnxruntime)",
        "calibration_inputs": int(len(samples)),
        "inputs_seen": int(recorder.seen),
        "from_weights_sha256": analyzer.card.sha256,
    }

