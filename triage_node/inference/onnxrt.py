"""The int8 path: a model's network exported to ONNX, statically quantised, and run by ONNX Runtime.

``triage-lab export NAME`` (triage_lab/quantize.py) writes the file, calibrated on validation cases; the card's
``exports.int8`` holds its name, sha256 and how it was made.

With ``models.precision: int8`` an analyzer keeps its pre- and post-processing and swaps only the network for an
``OrtNet`` over that file, after checking the file's sha256 against the card (a missing or modified file is refused,
as for the weights). Grad-CAM still runs on the float torch network: it needs gradients.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from triage_node.inference.card import ModelCard, sha256_file
from triage_node.inference.errors import ModelLoadError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

INT8 = "int8"
OPSET = 17


class OrtNet:
    """An ONNX Runtime session behind the call signature of the torch network it replaces: one float32 tensor in, one
    tensor (or a tuple, for a network with several outputs) out."""

    def __init__(self, model: Path | bytes, threads: int = 1) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3  # warnings about unused initializers etc. are not the operator's business
        src = str(model) if isinstance(model, Path) else model
        self.session = ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def eval(self) -> OrtNet:
        return self

    def __call__(self, x: torch.Tensor) -> Any:
        import torch

        outs = self.session.run(None, {self.input_name: x.detach().float().cpu().numpy()})
        tensors = tuple(torch.from_numpy(o) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors


def int8_export(card: ModelCard) -> Path:
    """The card's verified int8 file; ``ModelLoadError`` when the card has none, or the file is missing or modified."""
    entry = card.exports.get(INT8)
    if not entry:
        raise ModelLoadError(
            f"model {card.name!r} has no int8 export in its card; create one with `triage-lab export {card.name}` "
            "or set models.precision to auto, fp32 or bf16"
        )
    if entry.get("from_weights_sha256") != card.sha256:
        raise ModelLoadError(
            f"model {card.name!r}: the int8 export was made from other weights (sha256 "
            f"{entry.get('from_weights_sha256')}, card {card.sha256}); run `triage-lab export {card.name}` again"
        )
    path = card.directory / str(entry["file"])
    if not path.is_file():
        raise ModelLoadError(f"model {card.name!r}: int8 export {path} is missing")
    actual = sha256_file(path)
    if actual != entry["sha256"]:
        raise ModelLoadError(
            f"model {card.name!r}: int8 export {path} has sha256 {actual}, but the card expects {entry['sha256']}; "
            "refusing to load a modified or mismatched export"
        )
    return path


def network(card: ModelCard, torch_net: torch.nn.Module, precision: str, threads: int) -> Any:
    """What an analyzer calls for a resolved ``precision``: the torch network, or for ``int8`` the card's export."""
    if precision != INT8:
        return torch_net
    return OrtNet(int8_export(card), threads)
