"""Declarative routing: the first rule in config order whose conditions hold picks the series' pipeline.

A rule's conditions are of two kinds. Series conditions (modality, body part, study / series description, protocol
name, ``series_description_excludes``) look at the series' first instance. Image conditions (``sequence_name``,
``image_type_contains`` / ``image_type_excludes``, ``min_b_value``) look at each image, because one series can mix
kinds: b=0 and b=1000 (and sometimes ADC maps) in one diffusion series, magnitude and phase in one Philips SWI series.
A series matches when its series conditions hold and at least one of its images meets the image conditions, both of
the rule and of at least one of its ``any_of`` alternatives; :func:`select_images` then keeps only those images.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom.dataset import Dataset

from triage_node.config import Match, RoutingRule

# GE's private image type (0043,102F, creator GEMS_PARM_01) and the standard Complex Image Component (0008,9208) say
# magnitude / phase where the ImageType does not; they are folded into the image's type values.
_GE_IMAGE_TYPE = {0: "MAGNITUDE", 1: "PHASE", 2: "REAL", 3: "IMAGINARY"}


@dataclass(frozen=True)
class ImageKind:
    """What image conditions look at in one instance: ImageType values (upper case, plus the complex component and
    acquisition contrast where given), the sequence name and the diffusion b-value."""

    image_type: tuple[str, ...] = ()
    sequence_name: str = ""
    b_value: float | None = None

    @classmethod
    def from_dataset(cls, ds: Dataset) -> ImageKind:
        values = [str(v).upper() for v in ds.get("ImageType", []) or []]
        for keyword in ("ComplexImageComponent", "AcquisitionContrast"):
            extra = str(ds.get(keyword, "") or "").upper()
            if extra and extra not in values:
                values.append(extra)
        ge = _ge_image_type(ds)
        if ge is not None and ge not in values:
            values.append(ge)
        seq = str(ds.get("SequenceName", "") or ds.get("PulseSequenceName", "") or "")
        return cls(tuple(values), seq, b_value(ds))


def _ge_image_type(ds: Dataset) -> str | None:
    creator = ds.get((0x0043, 0x0010))
    elem = ds.get((0x0043, 0x102F))
    if creator is None or elem is None or str(creator.value).strip().upper() != "GEMS_PARM_01":
        return None
    value = elem.value
    if isinstance(value, bytes):  # implicit VR without a private dictionary: raw SS
        if len(value) < 2:
            return None
        value = int.from_bytes(value[:2], "little", signed=True)
    try:
        return _GE_IMAGE_TYPE.get(int(value))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class SeriesAttributes:
    """The attributes rules look at. Series-level strings come from the first instance; ``images`` holds each distinct
    :class:`ImageKind` of the series. ``image_type``, ``sequence_name`` and ``b_values`` summarise them (union of the
    ImageType values, first instance's sequence name, every b-value) for messages and for callers that know no images.
    """

    modality: str = ""
    body_part: str = ""
    study_description: str = ""
    series_description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    image_type: tuple[str, ...] = ()
    b_values: tuple[float, ...] = ()
    images: tuple[ImageKind, ...] = ()

    @classmethod
    def from_datasets(cls, datasets: Sequence[Dataset]) -> SeriesAttributes:
        first = datasets[0]
        kinds: dict[ImageKind, None] = {}
        for ds in datasets:
            kinds.setdefault(ImageKind.from_dataset(ds), None)
        images = tuple(kinds)
        image_type: list[str] = []
        for kind in images:
            image_type.extend(v for v in kind.image_type if v not in image_type)
        return cls(
            modality=str(first.get("Modality", "") or ""),
            body_part=str(first.get("BodyPartExamined", "") or ""),
            study_description=str(first.get("StudyDescription", "") or ""),
            series_description=str(first.get("SeriesDescription", "") or ""),
            protocol_name=str(first.get("ProtocolName", "") or ""),
            sequence_name=images[0].sequence_name,
            image_type=tuple(image_type),
            b_values=tuple(sorted({k.b_value for k in images if k.b_value is not None})),
            images=images,
        )

    def kinds(self) -> tuple[ImageKind, ...]:
        """The images to test; one made of the summary fields when the caller gave none."""
        if self.images:
            return self.images
        return (ImageKind(self.image_type, self.sequence_name, max(self.b_values) if self.b_values else None),)


def b_value(ds: Dataset) -> float | None:
    """The diffusion b-value: the standard tag, then the common vendor tags (GE, Siemens, Philips)."""
    candidates = [
        ds.get((0x0018, 0x9087)),
        ds.get((0x0043, 0x1039)),
        ds.get((0x0019, 0x100C)),
        ds.get((0x2001, 0x1003)),
    ]
    for elem in candidates:
        if elem is None or elem.value in (None, b"", ""):
            continue
        value = elem.value
        try:
            if isinstance(value, bytes):
                value = value.decode("ascii", "ignore").split("\\")[0]
            if isinstance(value, list | tuple) or hasattr(value, "__iter__") and not isinstance(value, str):
                value = list(value)[0]
            b = float(value)
        except (TypeError, ValueError, IndexError):
            continue
        if b > 1e6:  # GE stores b + 1e9 in its first value
            b = b % 1e9
        return b
    return None


def _search(pattern: str | None, value: str) -> bool:
    return pattern is None or re.search(pattern, value, flags=re.IGNORECASE) is not None


def _series_fits(match: Match, attrs: SeriesAttributes) -> bool:
    if match.modality and attrs.modality.upper() not in {m.upper() for m in match.modality}:
        return False
    if match.series_description_excludes is not None and re.search(
        match.series_description_excludes, attrs.series_description, flags=re.IGNORECASE
    ):
        return False
    return (
        _search(match.body_part, attrs.body_part)
        and _search(match.study_description, attrs.study_description)
        and _search(match.series_description, attrs.series_description)
        and _search(match.protocol_name, attrs.protocol_name)
    )


def _image_fits(match: Match, image: ImageKind) -> bool:
    if not _search(match.sequence_name, image.sequence_name):
        return False
    if not all(t.upper() in image.image_type for t in match.image_type_contains):
        return False
    if any(t.upper() in image.image_type for t in match.image_type_excludes):
        return False
    return match.min_b_value is None or (image.b_value is not None and image.b_value >= match.min_b_value)


def fits(match: Match, attrs: SeriesAttributes, image: ImageKind) -> bool:
    """Whether ``image`` of the series ``attrs`` meets ``match``, including one of its ``any_of`` alternatives."""
    return (
        _series_fits(match, attrs)
        and _image_fits(match, image)
        and (not match.any_of or any(fits(alt, attrs, image) for alt in match.any_of))
    )


def matches(match: Match, attrs: SeriesAttributes) -> bool:
    """Whether the series holds at least one image that meets ``match``."""
    return any(fits(match, attrs, image) for image in attrs.kinds())


def route(rules: tuple[RoutingRule, ...], attrs: SeriesAttributes) -> RoutingRule | None:
    """The first rule that fits, or None."""
    return next((r for r in rules if matches(r.match, attrs)), None)


def select_images(match: Match, attrs: SeriesAttributes, datasets: Sequence[Dataset]) -> list[Dataset]:
    """The instances of a routed series that meet ``match`` (the rule that picked it): a magnitude SWI series' phase
    images, a diffusion series' ADC maps or a CT series' localizer are dropped before the volume is built."""
    verdict: dict[ImageKind, bool] = {}
    out = []
    for ds in datasets:
        kind = ImageKind.from_dataset(ds)
        if kind not in verdict:
            verdict[kind] = fits(match, attrs, kind)
        if verdict[kind]:
            out.append(ds)
    return out


def describe(attrs: SeriesAttributes) -> str:
    """A one-line, PHI-free summary for the 'no rule matched' reason."""
    image_type = "\\".join(attrs.image_type) or "-"
    text = (
        f"modality={attrs.modality or '-'} body_part={attrs.body_part or '-'} "
        f"series_description={attrs.series_description or '-'!r} image_type={image_type}"
    )
    if attrs.sequence_name:
        text += f" sequence_name={attrs.sequence_name!r}"
    if attrs.b_values:
        text += " b_values=" + ",".join(f"{b:g}" for b in attrs.b_values)
    return text
