"""The generic analyzers for models from outside: a classifier, a segmenter or a detector configured by its card alone.

The network comes from one of three formats, each checked by sha256 (the registry) before it is read:

- ``torchscript``: ``torch.jit.load``;
- ``onnx``: an ONNX Runtime session (``inference/onnxrt.OrtNet``);
- ``monai_bundle``: a bundle folder read through ``monai.bundle.ConfigParser``: ``configs/inference.json`` (or
  ``.yaml``) gives ``network_def``, ``models/model.pt`` its weights (or ``models/model.ts``, a TorchScript export);
  ``configs/metadata.json``'s ``network_data_format`` is checked against the card.

The input is made as the card says (``inference/external.py`` parses it): reorientation to ``input.orientation``,
intensity channels (CT windows, ranges, z-score), 2.5-D context, resampling to ``input.spacing``, then for 2-D slices
a resize (or centre pad) to ``input.size`` and for 3-D a MONAI ``SlidingWindowInferer`` with ``input.size`` as its
window. Outputs are mapped back to the Volume's grid before they are thresholded, so masks line up with the source
slices exactly as the built-in models' do.

A model is checked when it is built: it runs once on a synthetic input of the declared shape and every mismatch (output
channels versus labels, spatial shape, dtype, the bundle's own metadata) raises ``SpecError`` with the card's key
path; then the whole analysis runs once on a small synthetic volume. A broken card therefore stops the daemon at
start (``ModelLoadError``) and ``triage-node check-config`` / ``models --check`` report it.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydicom.sr.coding import Code
from scipy import ndimage

from triage_node.inference.analyzer import CardAnalyzer
from triage_node.inference.card import ModelCard
from triage_node.inference.cropgrid import keep_components
from triage_node.inference.external import ORIENTATION_LETTERS, ExternalSpec, LabelSpec, SpecError, parse
from triage_node.inference.ich import aggregate, key_slices
from triage_node.inference.precision import autocast, resolve
from triage_node.inference.segmenter import laterality
from triage_node.inference.types import Finding, ModelOutput
from triage_node.preprocess.volume import Volume
from triage_node.series.geometry import GeometryError

log = logging.getLogger(__name__)

Net = Callable[[torch.Tensor], Any]


class NotAccepted(GeometryError):
    """The series is outside what the card accepts (``accepts``); the job is rejected with this reason."""


# ---- formats -----------------------------------------------------------------------------------------------------


def _bundle_config(folder: Path) -> Path:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        p = folder / "configs" / name
        if p.is_file():
            return p
    raise SpecError(f"weights: the bundle {folder} has no configs/inference.json (MONAI bundle layout)")


def bundle_metadata(folder: Path) -> dict[str, Any]:
    p = folder / "configs" / "metadata.json"
    if not p.is_file():
        return {}
    try:
        return dict(json.loads(p.read_text()))
    except (OSError, ValueError) as e:
        raise SpecError(f"weights: the bundle's configs/metadata.json cannot be read: {e}") from e


def load_bundle(folder: Path, spec: ExternalSpec) -> torch.nn.Module:
    """The bundle's network: ``network_def`` from its inference config with ``models/model.pt`` loaded into it, or its
    TorchScript ``models/model.ts`` when there is no state dict (``bundle_weights`` in the card names another file)."""
    from monai.bundle import ConfigParser

    weights = folder / (spec.bundle_weights or "models/model.pt")
    if spec.bundle_weights is None and not weights.is_file() and (folder / "models" / "model.ts").is_file():
        weights = folder / "models" / "model.ts"
    if not weights.is_file():
        raise SpecError(f"bundle_weights: {weights} not found in the bundle")
    if weights.suffix == ".ts":
        scripted: torch.nn.Module = torch.jit.load(str(weights), map_location="cpu")
        return scripted
    parser = ConfigParser()
    parser.read_config(str(_bundle_config(folder)))
    meta = folder / "configs" / "metadata.json"
    if meta.is_file():
        parser.read_meta(str(meta))
    parser["bundle_root"] = str(folder)
    try:
        net = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as e:  # any error in the bundle's config is the card's problem, said once
        raise SpecError(f"weights: the bundle's network_def cannot be built: {type(e).__name__}: {e}") from e
    if not isinstance(net, torch.nn.Module):
        raise SpecError(f"weights: the bundle's network_def is a {type(net).__name__}, not a torch module")
    state = torch.load(str(weights), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and set(state) & {"model", "state_dict"} and len(state) <= 4:
        state = state.get("model", state.get("state_dict"))
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise SpecError(f"weights: {weights.name} does not fit the bundle's network_def: {str(e)[:400]}") from e
    return net


def check_bundle_metadata(folder: Path, spec: ExternalSpec) -> None:
    """The bundle's own ``network_data_format`` against the card: input channels and output channels."""
    fmt = bundle_metadata(folder).get("network_data_format") or {}
    image = (fmt.get("inputs") or {}).get("image") or {}
    pred = (fmt.get("outputs") or {}).get("pred") or {}
    n_in = image.get("num_channels")
    if isinstance(n_in, int) and n_in != spec.in_channels:
        raise SpecError(
            f"input.channels: the bundle's metadata.json says {n_in} input channel(s), the card makes "
            f"{spec.in_channels} ({len(spec.channels)} channel(s) x {2 * spec.context + 1} slice(s))"
        )
    n_out = pred.get("num_channels")
    if isinstance(n_out, int) and n_out != len(spec.labels):
        raise SpecError(
            f"labels: the bundle's metadata.json says {n_out} output channel(s), the card lists {len(spec.labels)} "
            f"label(s) ({', '.join(label.name for label in spec.labels)})"
        )


class OnnxNet:
    """ONNX Runtime behind a torch call signature; ``device`` cuda uses the CUDA provider when this build has it."""

    def __init__(self, path: Path, threads: int, device: str) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = max(1, threads)
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if torch.device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types
            raise SpecError(f"weights: ONNX Runtime cannot load {path.name}: {str(e)[:400]}") from e
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise SpecError(f"format: the ONNX model has {len(inputs)} inputs; one image input is expected")
        self.input = inputs[0]
        self.providers = self.session.get_providers()

    def check(self, spec: ExternalSpec) -> None:
        if self.input.type != "tensor(float)":
            raise SpecError(
                f"format: the ONNX input {self.input.name!r} is {self.input.type}; the card's input is float32 "
                "(export the model with a float32 input)"
            )
        want = spec.input_shape()
        shape = list(self.input.shape)
        if len(shape) != len(want):
            raise SpecError(f"input.dims: the ONNX input {self.input.name!r} has shape {shape}, the card makes "
                            f"{list(want)}")
        if isinstance(shape[0], int) and shape[0] < spec.batch:
            raise SpecError(f"input.batch: the ONNX input {self.input.name!r} has a fixed batch of {shape[0]}; set "
                            f"input.batch: {shape[0]} or export the model with a dynamic batch axis")
        for i, (have, need) in enumerate(zip(shape, want, strict=True)):
            if isinstance(have, int) and i > 0 and have != need:
                key = "input.channels" if i == 1 else "input.size"
                raise SpecError(f"{key}: the ONNX input {self.input.name!r} has shape {shape}, the card makes "
                                f"{list(want)}")

    def eval(self) -> OnnxNet:
        return self

    def __call__(self, x: torch.Tensor) -> Any:
        outs = self.session.run(None, {self.input.name: x.detach().float().cpu().numpy()})
        tensors = tuple(torch.from_numpy(o) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors


# ---- geometry ----------------------------------------------------------------------------------------------------


def axis_codes(volume: Volume) -> str:
    """The orientation letters (RAS convention: the direction each index increases towards) of the Volume's (z, y, x)
    axes, e.g. ``SPL`` for a plain axial series."""
    dirs = [volume.normal, np.asarray(volume.col_direction), np.asarray(volume.row_direction)]
    out = ""
    for d in dirs:
        ras = np.asarray(d, float) * np.array([-1.0, -1.0, 1.0])  # LPS -> RAS
        k = int(np.argmax(np.abs(ras)))
        out += ("R", "A", "S")[k] if ras[k] > 0 else ("L", "P", "I")[k]
    return out


def orientation_plan(current: str, target: str | None) -> tuple[tuple[int, int, int], tuple[bool, bool, bool]]:
    """(perm, flips): ``np.flip(a.transpose(perm), axes where flips)`` turns an array in ``current`` axis codes into
    one in ``target`` codes (identity when ``target`` is None)."""
    if target is None:
        return (0, 1, 2), (False, False, False)
    perm, flips = [], []
    for letter in target:
        group = ORIENTATION_LETTERS[letter]
        src = next(i for i, c in enumerate(current) if ORIENTATION_LETTERS[c] == group)
        perm.append(src)
        flips.append(current[src] != letter)
    return (perm[0], perm[1], perm[2]), (flips[0], flips[1], flips[2])


def apply_orientation(a: np.ndarray, perm: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    """``a``: (..., 3 spatial axes)."""
    lead = a.ndim - 3
    out = a.transpose(*range(lead), *(lead + p for p in perm))
    axes = tuple(lead + i for i, f in enumerate(flips) if f)
    return np.flip(out, axis=axes) if axes else out


def invert_orientation(a: np.ndarray, perm: tuple[int, ...], flips: tuple[bool, ...]) -> np.ndarray:
    lead = a.ndim - 3
    axes = tuple(lead + i for i, f in enumerate(flips) if f)
    if axes:
        a = np.flip(a, axis=axes)
    inv = np.argsort(perm)
    return a.transpose(*range(lead), *(lead + int(p) for p in inv))


def intensity_channels(pixels: np.ndarray, spec: ExternalSpec) -> np.ndarray:
    """Volume pixels (z, y, x) -> float32 (C, z, y, x), one per ``input.channels`` entry."""
    px = np.asarray(pixels, np.float32)
    out = np.empty((len(spec.channels), *px.shape), np.float32)
    for i, ch in enumerate(spec.channels):
        if ch.window is not None:
            level, width = ch.window
            out[i] = np.clip((px - (level - width / 2)) / width, 0.0, 1.0)
        elif ch.range is not None:
            lo, hi = ch.range
            out[i] = np.clip((px - lo) / (hi - lo), 0.0, 1.0)
        elif ch.normalise == "zscore":
            out[i] = (px - float(px.mean())) / (float(px.std()) + 1e-6)
        elif ch.normalise == "robust":
            fg = px[px > px.min()] if px.size else px
            fg = fg if fg.size else px
            med = float(np.median(fg)) if fg.size else 0.0
            lo, hi = np.percentile(fg, [5.0, 95.0]) if fg.size else (0.0, 1.0)
            out[i] = (px - med) / max(float(hi - lo), 1e-6)
        else:
            out[i] = px
    return out


def _resize(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    if tuple(x.shape[2:]) == tuple(size):
        return x
    mode = "bilinear" if x.ndim == 4 else "trilinear"
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def _pad_to(x: torch.Tensor, size: tuple[int, int], fill: torch.Tensor) -> torch.Tensor:
    """Centre-pad (with ``fill`` per channel) or centre-crop (n, C, h, w) to ``size``."""
    n, c, h, w = x.shape
    out = fill.reshape(1, c, 1, 1).expand(n, c, *size).clone()
    H, W = size
    sy, dy = max(0, (h - H) // 2), max(0, (H - h) // 2)
    sx, dx = max(0, (w - W) // 2), max(0, (W - w) // 2)
    hh, ww = min(h, H), min(w, W)
    out[:, :, dy : dy + hh, dx : dx + ww] = x[:, :, sy : sy + hh, sx : sx + ww]
    return out


def _unpad(y: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_pad_to` for outputs: (n, K, H, W) back to (n, K, h, w) (zeros where it was cropped)."""
    n, k, H, W = y.shape
    h, w = size
    out = torch.zeros((n, k, h, w), dtype=y.dtype)
    sy, dy = max(0, (h - H) // 2), max(0, (H - h) // 2)
    sx, dx = max(0, (w - W) // 2), max(0, (W - w) // 2)
    hh, ww = min(h, H), min(w, W)
    out[:, :, sy : sy + hh, sx : sx + ww] = y[:, :, dy : dy + hh, dx : dx + ww]
    return out


# ---- the analyzer ------------------------------------------------------------------------------------------------


class GenericAnalyzer(CardAnalyzer):
    """A classifier, segmenter or detector from outside, configured by its card (``inference/external.py``)."""

    def __init__(self, card: ModelCard, threads: int = 1, device: str = "cpu", precision: str = "fp32") -> None:
        super().__init__(card, threads, device)  # precision: _load decides by the weights' format
        self.where = card.directory / "model.yaml"
        try:
            self.spec = parse(card.external)
        except SpecError as e:
            raise SpecError(f"{self.where}: {e}") from e
        self.torch_net: torch.nn.Module | None = None
        self._cam: object | None = None
        try:
            self.net = self._load(threads, device, precision)
            self._register_codes()
            self.check()
        except SpecError as e:
            raise SpecError(f"{self.where}: {e}") from e

    # -- loading

    def _load(self, threads: int, device: str, precision: str) -> Net:
        spec, path = self.spec, self.card.weights_path
        if spec.format == "onnx":
            net = OnnxNet(path, threads, device)
            net.check(spec)
            self.precision = "fp32"  # ONNX Runtime runs the graph as exported
            if precision not in ("auto", "fp32"):
                log.info("model %s: ONNX Runtime runs the model as exported; models.precision %s does not apply",
                         self.name, precision)
            return net
        if spec.format == "torchscript":
            try:
                module: torch.nn.Module = torch.jit.load(str(path), map_location="cpu")
            except RuntimeError as e:
                raise SpecError(f"weights: {path.name} is not a TorchScript archive: {str(e)[:300]}") from e
        else:
            check_bundle_metadata(path, spec)
            module = load_bundle(path, spec)
        module = module.eval().to(self.device)
        self.torch_net = module
        if precision == "int8":
            if self.card.exports.get("int8"):
                from triage_node.inference.onnxrt import network

                self.precision = "int8"
                return network(self.card, module, "int8", threads)  # type: ignore[no-any-return]
            log.warning("model %s has no int8 export in its card; it runs in fp32 (models.precision int8 applies "
                        "to the models that have one)", self.name)
            precision = "fp32"
        self.precision = resolve(precision, device)
        return module

    def _register_codes(self) -> None:
        from triage_node.results import codes

        for i, label in enumerate(self.spec.labels):
            if not label.reported or (label.code is None and label.name in codes.LESIONS):
                continue
            finding = Code(label.code.value, label.code.scheme, label.code.meaning) if label.code else None
            seg = label.segment_code or label.code
            region = label.region_code
            lesion = codes.LesionClass(
                finding_type=finding or codes.LESION,
                segment_type=Code(seg.value, seg.scheme, seg.meaning) if seg else codes.LESION,
                region=Code(region.value, region.scheme, region.meaning) if region else codes.INTRACRANIAL,
                phrase=label.phrase,
            )
            try:
                codes.register_lesion(label.name, lesion)
            except ValueError as e:
                raise SpecError(f"labels[{i}].code: {e}") from e

    # -- the check at start

    def check(self) -> None:
        """Run the network once on a synthetic input of the declared shape; then the whole analysis once on a small
        synthetic volume. ``SpecError`` names the card key of any mismatch."""
        spec = self.spec
        shape = spec.input_shape()
        x = torch.rand(shape, generator=torch.Generator().manual_seed(0))
        try:
            with torch.inference_mode(), autocast(self.precision, self.device.type):
                y = self.net(x.to(self.device))
        except SpecError:
            raise
        except Exception as e:  # whatever the network raises, the card's input spec is the cause
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise SpecError(
                f"input: the network refused an input of shape {tuple(shape)} float32 (input.channels x "
                f"input.context, input.size): {type(e).__name__}: {first}"
            ) from e
        if isinstance(y, tuple | list):
            raise SpecError(f"format: the network returns {len(y)} outputs; one tensor (N, labels, ...) is expected")
        if not isinstance(y, torch.Tensor):
            raise SpecError(f"format: the network returns a {type(y).__name__}; a tensor is expected")
        if not y.is_floating_point():
            raise SpecError(f"output: the network's output dtype is {y.dtype}; logits or probabilities (floating "
                            "point) are expected")
        want = spec.output_shape()
        if y.ndim != len(want) or y.shape[0] != 1:
            raise SpecError(
                f"kind: a {spec.kind} with input.dims {spec.dims} must return shape {want}, the network returned "
                f"{tuple(y.shape)} for input {tuple(shape)}"
            )
        if y.shape[1] != len(spec.labels):
            raise SpecError(
                f"labels: the network gives {y.shape[1]} output channel(s), the card lists {len(spec.labels)} "
                f"label(s) ({', '.join(label.name for label in spec.labels)}): one label per output channel, in order"
            )
        if tuple(y.shape[2:]) != tuple(want[2:]):
            raise SpecError(
                f"input.size: the network returned {tuple(y.shape)} for input {tuple(shape)}; a {spec.kind} must "
                "return one value per input pixel"
            )
        if not bool(torch.isfinite(y.float()).all()):
            raise SpecError(f"output: the network returned NaN or infinite values on a synthetic input {tuple(shape)}")
        try:
            self._analyze(self.synthetic_volume())
        except SpecError:
            raise
        except Exception as e:  # reported at load with the card, never at the first study
            raise SpecError(f"input: the analysis of a synthetic volume failed: {type(e).__name__}: "
                            f"{str(e).strip()[:300]}") from e

    def synthetic_volume(self) -> Volume:
        """A small volume the card accepts: enough slices, 1 mm in-plane, its first modality."""
        spec = self.spec
        n = max(spec.min_slices, 2 * spec.context + 1, 4 if spec.dims == 2 else spec.size[0] // 2)
        h = w = 48
        rng = np.random.default_rng(0)
        dz = min(spec.max_slice_spacing_mm or 3.0, 3.0)
        px = rng.normal(30.0, 10.0, (n, h, w)).astype(np.float32)
        return Volume(
            pixels=px,
            spacing=(dz, 1.0, 1.0),
            origin=(0.0, 0.0, 0.0),
            row_direction=(1.0, 0.0, 0.0),
            col_direction=(0.0, 1.0, 0.0),
            sop_instance_uids=tuple(f"1.2.3.{i + 1}" for i in range(n)),
            modality=spec.modalities[0],
        )

    # -- inference

    def accepts(self, volume: Volume) -> str | None:
        """None when the card accepts ``volume``, else the reason it does not."""
        spec = self.spec
        if volume.modality.upper() not in spec.modalities:
            return f"modality {volume.modality} (accepts.modalities {list(spec.modalities)})"
        if volume.pixels.shape[0] < spec.min_slices:
            return f"{volume.pixels.shape[0]} slice(s) (accepts.min_slices {spec.min_slices})"
        if spec.max_slice_spacing_mm is not None and volume.spacing[0] > spec.max_slice_spacing_mm + 1e-6:
            return f"slice spacing {volume.spacing[0]:g} mm (accepts.max_slice_spacing_mm " \
                f"{spec.max_slice_spacing_mm:g})"
        return None

    def _activate(self, y: torch.Tensor) -> torch.Tensor:
        y = y.float()
        if self.spec.activation == "sigmoid":
            return torch.sigmoid(y)
        if self.spec.activation == "softmax":
            return torch.softmax(y, dim=1)
        return y.clamp(0.0, 1.0)

    def _oriented(self, volume: Volume) -> tuple[np.ndarray, tuple[float, float, float], Any]:
        perm, flips = orientation_plan(axis_codes(volume), self.spec.orientation)
        chans = np.ascontiguousarray(apply_orientation(intensity_channels(volume.pixels, self.spec), perm, flips))
        sp = tuple(float(volume.spacing[p]) for p in perm)
        return chans, (sp[0], sp[1], sp[2]), (perm, flips)

    def probabilities(self, volume: Volume) -> np.ndarray:
        """Classifier: float32 (K, z) per slice; segmenter/detector: float32 (K, z, y, x) on the Volume's grid."""
        chans, sp, (perm, flips) = self._oriented(volume)
        with torch.inference_mode(), autocast(self.precision, self.device.type):
            prob = self._run_3d(chans, sp) if self.spec.dims == 3 else self._run_2d(chans, sp, perm.index(0))
        if self.spec.kind == "classifier":  # (K, n) along the slice axis: undo its flip only
            return prob[:, ::-1].copy() if flips[perm.index(0)] else prob
        return np.ascontiguousarray(invert_orientation(prob, perm, flips))

    def _run_2d(self, chans: np.ndarray, sp: tuple[float, float, float], slice_axis: int) -> np.ndarray:
        spec = self.spec
        arr = np.moveaxis(chans, 1 + slice_axis, 1)  # (C, n, h, w)
        c, n, h, w = arr.shape
        in_sp = [s for i, s in enumerate(sp) if i != slice_axis]
        vol = torch.from_numpy(np.ascontiguousarray(arr)).transpose(0, 1)  # (n, C, h, w)
        fill = vol.amin(dim=(0, 2, 3)) if n else torch.zeros(c)
        k = len(spec.labels)
        outs = []
        for i in range(0, n, spec.batch):
            idx = torch.arange(i, min(i + spec.batch, n))
            parts = [vol[idx]]
            for d in range(1, spec.context + 1):
                parts.append(vol[(idx - d).clamp(0, n - 1)])
                parts.append(vol[(idx + d).clamp(0, n - 1)])
            x = torch.cat(parts, dim=1)
            if spec.spacing is not None:
                x = _resize(x, tuple(max(1, round(s * a / b)) for s, a, b in zip((h, w), in_sp, spec.spacing,
                                                                               strict=True)))
            mid = tuple(x.shape[2:])
            full_fill = fill.repeat(2 * spec.context + 1)
            x = _resize(x, spec.size) if spec.fit == "resize" else _pad_to(x, (spec.size[0], spec.size[1]), full_fill)
            y = self._activate(self.net(x.to(self.device))).cpu()
            if spec.kind != "classifier":
                y = _resize(y, mid) if spec.fit == "resize" else _unpad(y, (int(mid[0]), int(mid[1])))
                y = _resize(y, (h, w))
            outs.append(y)
        if spec.kind == "classifier":
            return torch.cat(outs).T.numpy() if outs else np.zeros((k, 0), np.float32)
        prob = torch.cat(outs).transpose(0, 1).numpy() if outs else np.zeros((k, 0, h, w), np.float32)  # (K, n, h, w)
        return np.ascontiguousarray(np.moveaxis(prob, 1, 1 + slice_axis))

    def _run_3d(self, chans: np.ndarray, sp: tuple[float, float, float]) -> np.ndarray:
        from monai.inferers import SlidingWindowInferer

        spec = self.spec
        shape = chans.shape[1:]
        x = torch.from_numpy(chans)[None]
        if spec.spacing is not None:
            x = _resize(x, tuple(max(1, round(s * a / b)) for s, a, b in zip(shape, sp, spec.spacing, strict=True)))
        inferer = SlidingWindowInferer(roi_size=spec.size, sw_batch_size=spec.batch, overlap=spec.overlap)
        y = inferer(x.to(self.device), lambda t: self.net(t))
        assert isinstance(y, torch.Tensor)
        y = _resize(self._activate(y).cpu(), tuple(shape))
        return y[0].numpy()

    # -- findings

    def analyze(self, volume: Volume) -> ModelOutput:
        why = self.accepts(volume)
        if why is not None:
            raise NotAccepted(f"model {self.name} does not accept this series: {why}")
        return self._analyze(volume)

    def _analyze(self, volume: Volume) -> ModelOutput:
        t0 = time.monotonic()
        prob = self.probabilities(volume)
        findings: list[Finding] = []
        masks: dict[str, np.ndarray] = {}
        heatmaps: dict[str, np.ndarray] = {}
        for i, label in enumerate(self.spec.labels):
            if not label.reported:
                continue
            if self.spec.kind == "classifier":
                findings.append(self._classify(label, prob[i]))
            else:
                f, mask = self._segment(label, prob[i], volume)
                findings.append(f)
                masks[label.name] = mask
        if self.spec.kind == "classifier" and self.spec.heatmap_layer is not None:
            target = self.spec.heatmap_label or self.spec.reported[0].name
            f = next(f for f in findings if f.label == target)
            if f.present:
                heatmaps[target] = self.gradcam(volume, target, f.key_slices[: self.spec.heatmap_max_slices])
        return ModelOutput(self.name, self.version, tuple(findings), masks=masks, heatmaps=heatmaps,
                           seconds=time.monotonic() - t0)

    def _classify(self, label: LabelSpec, p: np.ndarray) -> Finding:
        series = float(aggregate(p[:, None], self.spec.aggregation)[0])
        present = series >= label.threshold
        return Finding(
            label=label.name,
            present=present,
            probability=float(np.clip(series, 0.0, 1.0)),
            model=self.name,
            model_version=self.version,
            key_slices=key_slices(p, label.threshold) if present else (),
        )

    def _segment(self, label: LabelSpec, p: np.ndarray, volume: Volume) -> tuple[Finding, np.ndarray]:
        spec = self.spec
        raw = p >= label.threshold
        voxel_mm3 = volume.voxel_volume_ml * 1000.0
        count: int | None = None
        positions: tuple[tuple[float, float, float], ...] = ()
        if spec.kind == "detector":
            lab, n = ndimage.label(raw, structure=np.ones((3, 3, 3), bool))
            sizes = np.bincount(lab.ravel(), minlength=n + 1) * voxel_mm3
            keep = [i for i in range(1, n + 1) if sizes[i] >= spec.min_component_mm3]
            mask = np.isin(lab, keep) if keep else np.zeros_like(raw)
            count = len(keep)
            if keep:
                centres = ndimage.center_of_mass(raw, lab, keep)
                pts = volume.voxel_to_patient(np.asarray(centres, float))
                positions = tuple((float(a), float(b), float(c)) for a, b, c in pts)
            present = count >= spec.min_count
        else:
            mask = keep_components(raw, volume.spacing, 0.0, spec.max_components, 0.0) if raw.any() else raw
            if spec.min_volume_ml > 0 and mask.any():
                lab, n = ndimage.label(mask)
                ml = np.bincount(lab.ravel(), minlength=n + 1) * volume.voxel_volume_ml
                mask = np.isin(lab, [i for i in range(1, n + 1) if ml[i] >= spec.min_volume_ml])
            present = bool(mask.any())
            if present:
                c = volume.voxel_to_patient(np.argwhere(mask).mean(axis=0))[0]
                positions = ((float(c[0]), float(c[1]), float(c[2])),)
        per_slice = mask.sum(axis=(1, 2))
        order = np.argsort(-per_slice, kind="stable")
        probability = float(p[mask].max()) if mask.any() else float(p.max()) if p.size else 0.0
        finding = Finding(
            label=label.name,
            present=bool(present),
            probability=float(np.clip(probability, 0.0, 1.0)),
            model=self.name,
            model_version=self.version,
            volume_ml=round(float(mask.sum()) * volume.voxel_volume_ml, 3),
            laterality=laterality(volume, mask) if present else None,
            count=count,
            key_slices=tuple(int(i) for i in order if per_slice[i] > 0),
            positions=positions,
        )
        return finding, mask.astype(bool)

    def gradcam(self, volume: Volume, target: str, slices: tuple[int, ...]) -> np.ndarray:
        """Grad-CAM of ``target`` on ``slices`` (Volume z indices) at ``heatmap.layer``: float32 (z, y, x) in [0, 1].
        Only for bundles (a Python network); orientation is not undone for maps, so cards with an in-plane
        reorientation get none."""
        z, h, w = volume.pixels.shape
        heat = np.zeros((z, h, w), np.float32)
        spec = self.spec
        if not slices or self.torch_net is None or isinstance(self.torch_net, torch.jit.ScriptModule):
            return heat
        if spec.orientation is not None and orientation_plan(axis_codes(volume), spec.orientation)[0] != (0, 1, 2):
            return heat
        from monai.visualize import GradCAM

        if self._cam is None:
            self._cam = GradCAM(nn_module=copy.deepcopy(self.torch_net), target_layers=str(spec.heatmap_layer))
        chans = intensity_channels(volume.pixels, spec)  # (C, z, y, x)
        vol = torch.from_numpy(chans).transpose(0, 1)
        idx = torch.tensor(slices)
        parts = [vol[idx]]
        for d in range(1, spec.context + 1):
            parts.append(vol[(idx - d).clamp(0, z - 1)])
            parts.append(vol[(idx + d).clamp(0, z - 1)])
        x = torch.cat(parts, dim=1)
        if spec.fit == "pad":
            return heat
        x = _resize(x, spec.size).to(self.device)
        k = [label.name for label in spec.labels].index(target)
        with torch.enable_grad():
            maps = self._cam(x=x, class_idx=k)  # type: ignore[operator]
        maps = _resize(maps.detach().float().cpu(), (h, w))
        heat[list(slices)] = maps[:, 0].clamp(0, 1).numpy()
        return heat
