"""Who made a result object and what it is called: the algorithm's IHE AIR identity, a job's stored result UIDs and
the UIDs derived from them, and the provenance every builder stamps (contributing equipment, creation dates).

The builders (build, seg, sr, visible) all import from here, so none of them imports another to share these.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import highdicom as hd
import pydicom
from pydicom.uid import generate_uid

from triage_node import __version__
from triage_node.inference.types import ModelOutput
from triage_node.results import codes

MANUFACTURER = "triage-node project"


class ResultsInputError(ValueError):
    """The inputs to ``build_results`` do not fit together (shapes, UIDs, unknown models)."""


@dataclass(frozen=True)
class AlgorithmInfo:
    """One model as IHE AIR identifies it: name, version, Device UID (from the model card) and manufacturer."""

    name: str
    version: str
    device_uid: str
    manufacturer: str = MANUFACTURER

    def __post_init__(self) -> None:
        for field in ("name", "version", "manufacturer"):
            value = getattr(self, field)
            if not value or len(value) > 64:
                raise ValueError(f"AlgorithmInfo.{field} must be 1-64 characters, got {value!r}")
        check_uid("AlgorithmInfo.device_uid", self.device_uid)


class StoredIdentity(Protocol):
    """What ``ResultIdentity.from_job`` reads from a job (``worklist.models.Job``; results stay free of the ORM)."""

    @property
    def seg_series_uid(self) -> str: ...
    @property
    def seg_sop_uid(self) -> str: ...
    @property
    def sr_series_uid(self) -> str: ...
    @property
    def sr_sop_uid(self) -> str: ...
    @property
    def map_series_uid(self) -> str: ...
    @property
    def map_sop_uid(self) -> str: ...
    @property
    def result_series_number(self) -> int: ...
    @property
    def created_at(self) -> dt.datetime | None: ...


@dataclass(frozen=True)
class ResultIdentity:
    """The identities of a job's result objects, made once per job and stored on the job row.

    ``series_number`` is the SEG's; the map and the SR take the next two numbers. ``created_at`` (the job's creation
    time) becomes the objects' content and instance creation date/time; without it the source study's date/time is
    used, never the clock, so that rebuilds stay byte-identical.
    """

    seg_series_uid: str
    seg_sop_uid: str
    sr_series_uid: str
    sr_sop_uid: str
    map_series_uid: str
    map_sop_uid: str
    series_number: int
    created_at: dt.datetime | None = None

    def __post_init__(self) -> None:
        for field in ("seg_series_uid", "seg_sop_uid", "sr_series_uid", "sr_sop_uid", "map_series_uid", "map_sop_uid"):
            check_uid(f"ResultIdentity.{field}", getattr(self, field))
        if not 1 <= self.series_number <= 2**31 - 3:
            raise ValueError(f"ResultIdentity.series_number must be a positive integer, got {self.series_number}")

    # The visible results (results/visible.py) take UIDs derived from the SEG's stored ones: as stable per job as
    # the stored UIDs themselves, with no column per object (a job has up to three key images).
    @property
    def sc_series_uid(self) -> str:
        return derived_uid(self.seg_series_uid, "sc-series")

    def sc_sop_uid(self, number: int) -> str:
        return derived_uid(self.seg_sop_uid, "sc", str(number))

    @property
    def gsps_series_uid(self) -> str:
        return derived_uid(self.seg_series_uid, "gsps-series")

    @property
    def gsps_sop_uid(self) -> str:
        return derived_uid(self.seg_sop_uid, "gsps")

    @property
    def pdf_series_uid(self) -> str:
        return derived_uid(self.seg_series_uid, "pdf-series")

    @property
    def pdf_sop_uid(self) -> str:
        return derived_uid(self.seg_sop_uid, "pdf")

    @classmethod
    def new(cls, series_number: int = 9000, created_at: dt.datetime | None = None) -> ResultIdentity:
        """Fresh random UIDs (the caller stores them on the job)."""
        return cls(
            seg_series_uid=generate_uid(),
            seg_sop_uid=generate_uid(),
            sr_series_uid=generate_uid(),
            sr_sop_uid=generate_uid(),
            map_series_uid=generate_uid(),
            map_sop_uid=generate_uid(),
            series_number=series_number,
            created_at=created_at,
        )

    @classmethod
    def from_job(cls, job: StoredIdentity) -> ResultIdentity:
        """The identity stored on a job row."""
        return cls(
            seg_series_uid=job.seg_series_uid,
            seg_sop_uid=job.seg_sop_uid,
            sr_series_uid=job.sr_series_uid,
            sr_sop_uid=job.sr_sop_uid,
            map_series_uid=job.map_series_uid,
            map_sop_uid=job.map_sop_uid,
            series_number=job.result_series_number,
            created_at=job.created_at,
        )


_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+")


def check_uid(name: str, uid: str) -> None:
    """Raise ValueError unless ``uid`` is a valid DICOM UID of at most 64 characters."""
    if not isinstance(uid, str) or len(uid) > 64 or not _UID.fullmatch(uid):
        raise ValueError(f"{name} must be a valid DICOM UID of at most 64 characters, got {uid!r}")


def derived_uid(base: str, *parts: str) -> str:
    """A UID derived deterministically from ``base`` and ``parts`` (pydicom root + a SHA-512 of the inputs)."""
    return str(generate_uid(entropy_srcs=[base, *parts]))


def used_algorithms(outputs: Sequence[ModelOutput], algorithms: Mapping[str, AlgorithmInfo]) -> list[AlgorithmInfo]:
    """The algorithms behind ``outputs``, each once, in the order they first appear."""
    seen: dict[str, AlgorithmInfo] = {}
    for out in outputs:
        seen.setdefault(out.model, algorithms[out.model])
    return list(seen.values())


def contributing_equipment(
    algorithms: Sequence[AlgorithmInfo], when: dt.datetime
) -> list[hd.ContributingEquipment]:
    """IHE AIR Contributing Equipment: one item per algorithm, purpose (109102, DCM, "Processing Equipment")."""
    items = []
    for algo in algorithms:
        item = hd.ContributingEquipment(
            manufacturer=algo.manufacturer,
            purpose_of_reference=codes.PROCESSING_EQUIPMENT,
            manufacturer_model_name=algo.name,
            software_versions=algo.version,
            contribution_datetime=when,
            contribution_description=f"triage-node {__version__} algorithm {algo.name} {algo.version}",
        )
        # IHE AIR identifies the algorithm instance by Device UID; highdicom has no parameter for it.
        item.DeviceUID = algo.device_uid
        items.append(item)
    return items


def stamp(ds: pydicom.Dataset, when: dt.datetime) -> None:
    """Replace highdicom's clock-derived dates with ``when`` so a rebuild is byte-identical."""
    date, time = when.strftime("%Y%m%d"), when.strftime("%H%M%S")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    if "ContentDate" in ds:
        ds.ContentDate, ds.ContentTime = date, time
    ds.SeriesDate, ds.SeriesTime = date, time
    for item in ds.get("ContributingEquipmentSequence", []):
        # highdicom adds an item for itself stamped with the clock.
        if item.get("ManufacturerModelName") == "highdicom":
            item.ContributionDateTime = date + time
