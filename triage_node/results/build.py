"""Build a job's result objects (DICOM SEG, Grad-CAM fractional SEG, TID 1500 SR) and write them atomically.

The builders are pure functions of their inputs: the same sources, outputs and ``ResultIdentity`` give byte-identical
files, so a rebuild after a crash or a resend delivers the very objects the PACS may already hold (IHE AIR).
Nothing here reads the clock: content and creation date/time come from ``ResultIdentity.created_at``.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from triage_node.inference.types import ModelOutput
from triage_node.preprocess.volume import Volume
from triage_node.results import codes, sop
from triage_node.results import visible as vis
from triage_node.results.identity import MANUFACTURER, AlgorithmInfo, ResultIdentity, ResultsInputError
from triage_node.results.seg import build_map, build_seg, lesion_segments
from triage_node.results.sr import build_sr

log = logging.getLogger(__name__)

SEG_SOP_CLASS = sop.SEG_SOP_CLASS
SR_SOP_CLASS = sop.SR_SOP_CLASS
RESULT_KINDS = ("seg", "map", "sr")
VISIBLE_OUTPUTS = ("sc", "gsps", "pdf")  # built only when a destination's ``outputs`` asks for them


def output_of(kind: str) -> str:
    """The ``outputs`` name (config) a result kind belongs to: the Grad-CAM map travels with the SEG, key images
    ``sc1``.. with ``sc``."""
    if kind == "map":
        return "seg"
    if kind.startswith("sc") and kind[2:].isdigit():
        return "sc"
    return kind


@dataclass(frozen=True)
class ResultFile:
    """One written result object."""

    kind: str  # 'seg' | 'sr' | 'map' | 'sc1'..'sc3' | 'gsps' | 'pdf'
    path: Path
    sop_class_uid: str
    sop_instance_uid: str


def check_inputs(
    sources: Sequence[pydicom.Dataset],
    volume: Volume,
    outputs: Sequence[ModelOutput],
    algorithms: Mapping[str, AlgorithmInfo],
) -> None:
    """Raise ResultsInputError unless sources, volume, masks and algorithms agree."""
    if not sources:
        raise ResultsInputError("sources must hold the kept source slices, got none")
    uids = tuple(str(ds.SOPInstanceUID) for ds in sources)
    if uids != volume.sop_instance_uids:
        raise ResultsInputError(
            "sources must be the volume's slices in z order: "
            f"{len(uids)} sources vs {len(volume.sop_instance_uids)} volume slices"
            + ("" if len(uids) != len(volume.sop_instance_uids) else " (same count, different order or UIDs)")
        )
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(studies) != 1:
        raise ResultsInputError(f"sources must belong to one study, got {len(studies)}")
    for out in outputs:
        if out.model not in algorithms:
            raise ResultsInputError(f"no AlgorithmInfo for model {out.model!r}; known: {sorted(algorithms)}")
        for kind, arrays in (("mask", out.masks), ("heatmap", out.heatmaps)):
            for label, arr in arrays.items():
                if arr.shape != volume.pixels.shape:
                    raise ResultsInputError(
                        f"{out.model} {kind} {label!r} has shape {arr.shape}, volume has {volume.pixels.shape}"
                    )


def content_datetime(identity: ResultIdentity, sources: Sequence[pydicom.Dataset]) -> dt.datetime:
    """The date/time stamped on the results: the job's creation time, else the study's (never the clock)."""
    if identity.created_at is not None:
        return identity.created_at.astimezone(dt.UTC).replace(tzinfo=None, microsecond=0)
    ds = sources[0]
    date = str(getattr(ds, "StudyDate", "") or getattr(ds, "SeriesDate", "") or "19700101")
    time = str(getattr(ds, "StudyTime", "") or "000000").split(".")[0].ljust(6, "0")[:6]
    return dt.datetime.strptime(date + time, "%Y%m%d%H%M%S")


def declare_local_codes(ds: pydicom.Dataset) -> None:
    """Add the Coding Scheme Identification Sequence when ``ds`` uses the private ``99TRN`` scheme (PS3.3
    C.12.1.1.7: required for coding schemes PS3.16 does not define)."""
    used = any(
        el.keyword == "CodingSchemeDesignator" and el.value == codes.LOCAL_SCHEME for el in ds.iterall()
    )
    if used and "CodingSchemeIdentificationSequence" not in ds:
        item = pydicom.Dataset()
        item.CodingSchemeDesignator = codes.LOCAL_SCHEME
        item.CodingSchemeName = "triage-node local codes"
        item.CodingSchemeResponsibleOrganization = MANUFACTURER
        ds.CodingSchemeIdentificationSequence = [item]


def write_atomically(ds: pydicom.Dataset, path: Path) -> None:
    """Write ``ds`` to ``path`` via a temporary file, fsync, rename, fsync of the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def build_results(
    sources: Sequence[pydicom.Dataset],
    volume: Volume,
    outputs: Sequence[ModelOutput],
    algorithms: Mapping[str, AlgorithmInfo],
    identity: ResultIdentity,
    priority: str,
    pipeline: str,
    out_dir: Path,
    source_frames: Sequence[int | None] | None = None,
    visible: Collection[str] = (),
) -> list[ResultFile]:
    """Build and write the job's results: SEG (when a mask is non-empty), Grad-CAM map (when heat maps exist), SR;
    and those of ``visible`` (``sc``, ``gsps``, ``pdf``) a destination asks for: key images and a presentation state
    when a mask is non-empty, the PDF always.

    ``source_frames``: for a volume made of the frames of one enhanced multi-frame instance, each slice's 0-based
    frame index (None for single-frame sources).

    ``sources``: the kept source slices in the volume's z order (headers suffice; pixel data is not read).
    ``outputs``: the analyzers' results, masks and heat maps aligned with ``volume``. Returns the written files, SEG
    and map before the SR that references them.
    """
    check_inputs(sources, volume, outputs, algorithms)
    codes.priority_code(priority)
    when = content_datetime(identity, sources)
    segments = lesion_segments(outputs)
    files: list[ResultFile] = []
    seg_ds: pydicom.Dataset | None = None
    if segments:
        seg_ds = build_seg(sources, segments, algorithms, identity, pipeline, when, source_frames)
        files.append(_save("seg", seg_ds, out_dir))
    heatmaps = [(out, label, arr) for out in outputs for label, arr in sorted(out.heatmaps.items()) if np.any(arr > 0)]
    if heatmaps:
        map_ds = build_map(sources, heatmaps, algorithms, identity, pipeline, when, source_frames)
        files.append(_save("map", map_ds, out_dir))
    sr_ds = build_sr(sources, volume, outputs, algorithms, identity, priority, pipeline, seg_ds, segments, when)
    files.append(_save("sr", sr_ds, out_dir))
    if visible:
        if "sc" in visible:
            for number, image in enumerate(
                vis.build_sc(sources, volume, segments, algorithms, identity, outputs, priority, when, source_frames),
                start=1,
            ):
                files.append(_save(f"sc{number}", image, out_dir))
        if "gsps" in visible:
            gsps = vis.build_gsps(sources, volume, segments, algorithms, identity, pipeline, when, source_frames)
            if gsps is not None:
                files.append(_save("gsps", gsps, out_dir))
        if "pdf" in visible:
            pdf = vis.build_pdf(
                sources, outputs, algorithms, identity, priority, pipeline, when, vis.key_slices(segments),
                source_frames,
            )
            files.append(_save("pdf", pdf, out_dir))
    log.info(
        "results built: %s (%d segments, %d heat maps) in %s",
        ", ".join(f.kind for f in files), len(segments), len(heatmaps), out_dir,
    )
    return files


def _save(kind: str, ds: pydicom.Dataset, out_dir: Path) -> ResultFile:
    path = Path(out_dir) / f"{kind}.dcm"
    declare_local_codes(ds)
    write_atomically(ds, path)
    return ResultFile(kind=kind, path=path, sop_class_uid=str(ds.SOPClassUID), sop_instance_uid=str(ds.SOPInstanceUID))
