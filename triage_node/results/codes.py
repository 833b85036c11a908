"""Coded concepts the SEG and SR use: lesion classes, finding sites, laterality, triage priority, units.

Every code sits in this one module so a terminology review touches one file. Where no SNOMED CT concept could be checked
against the DICOM standard's context groups offline, a local code in the private scheme ``99TRN`` is used instead of a
guess (PS3.3 8.1: coding scheme designators beginning with ``99`` are private); docs/results.md lists them.

Closed vocabularies (finding labels, priorities) are coerced here once: an unknown finding label falls back to the
generic SCT "Lesion" concept rather than failing the whole result, because a new model must not stop results reaching
the PACS.
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

LOCAL_SCHEME = "99TRN"


def local(value: str, meaning: str) -> Code:
    return Code(value, LOCAL_SCHEME, meaning)


# Segmented property category (CID 7150) for every lesion segment.
MORPHOLOGICALLY_ABNORMAL = codes.SCT.MorphologicallyAbnormalStructure  # 49755003

# Segmented property types (CID 7151 / 7159 family).
HEMORRHAGE = codes.SCT.Hemorrhage  # 50960005
INFARCT = Code("55641003", "SCT", "Infarct")
LESION = codes.SCT.Lesion  # 52988006
SALIENCY = codes.DCM.Saliency  # 130404

# Anatomic regions (CID 7151 / 4).
BRAIN = codes.SCT.Brain  # 12738006
INTRACRANIAL = codes.SCT.Intracranial  # 1101003
SUBARACHNOID_SPACE = codes.SCT.SubarachnoidSpace  # 35951006
BRAIN_VENTRICLE = codes.SCT.BrainVentricle  # 35764002

# SR finding types (disorders) where SNOMED CT has a well-known concept.
INTRACRANIAL_HEMORRHAGE = Code("1386000", "SCT", "Intracranial hemorrhage")
CEREBRAL_HEMORRHAGE = Code("274100004", "SCT", "Cerebral hemorrhage")
SUBARACHNOID_HEMORRHAGE = Code("21454007", "SCT", "Subarachnoid hemorrhage")
SUBDURAL_HEMORRHAGE = Code("35486000", "SCT", "Subdural hemorrhage")
EPIDURAL_HEMORRHAGE = local("EDH", "Epidural hemorrhage")
INTRAVENTRICULAR_HEMORRHAGE = local("IVH", "Intraventricular hemorrhage")
MICROBLEED = local("CMB", "Cerebral microbleed")


@dataclass(frozen=True)
class LesionClass:
    """How one finding label is coded.

    ``finding_type``: the SR finding type (TID 1501/1411 "Finding"). ``segment_type``: the SEG segmented property type
    (a morphologic abnormality). ``region``: the SEG anatomic region. ``phrase``: the words used in text summaries.
    """

    finding_type: Code
    segment_type: Code
    region: Code
    phrase: str


LESIONS: dict[str, LesionClass] = {
    "any_hemorrhage": LesionClass(INTRACRANIAL_HEMORRHAGE, HEMORRHAGE, INTRACRANIAL, "intracranial hemorrhage"),
    "hemorrhage": LesionClass(INTRACRANIAL_HEMORRHAGE, HEMORRHAGE, INTRACRANIAL, "intracranial hemorrhage"),
    "hemorrhage_extent": LesionClass(INTRACRANIAL_HEMORRHAGE, HEMORRHAGE, INTRACRANIAL, "intracranial hemorrhage"),
    "intraparenchymal": LesionClass(CEREBRAL_HEMORRHAGE, HEMORRHAGE, BRAIN, "intraparenchymal hemorrhage"),
    "subarachnoid": LesionClass(SUBARACHNOID_HEMORRHAGE, HEMORRHAGE, SUBARACHNOID_SPACE, "subarachnoid hemorrhage"),
    "subdural": LesionClass(SUBDURAL_HEMORRHAGE, HEMORRHAGE, INTRACRANIAL, "subdural hemorrhage"),
    "epidural": LesionClass(EPIDURAL_HEMORRHAGE, HEMORRHAGE, INTRACRANIAL, "epidural hemorrhage"),
    "intraventricular": LesionClass(
        INTRAVENTRICULAR_HEMORRHAGE, HEMORRHAGE, BRAIN_VENTRICLE, "intraventricular hemorrhage"
    ),
    "microbleed": LesionClass(MICROBLEED, HEMORRHAGE, BRAIN, "cerebral microbleeds"),
    "infarct": LesionClass(INFARCT, INFARCT, BRAIN, "acute infarct"),
}


def register_lesion(label: str, lesion: LesionClass) -> None:
    """Code a finding label of a model from outside (its card's ``labels[].code``). The same coding again is a no-op;
    a different coding of a label already known (a built-in label, or another card's) raises ValueError, so two
    models never report one label under two codes."""
    known = LESIONS.get(label)
    if known is not None and known != lesion:
        raise ValueError(
            f"label {label!r} is already coded as ({known.finding_type.value}, {known.finding_type.scheme_designator}, "
            f"{known.finding_type.meaning!r}); name the label differently or use the same code"
        )
    LESIONS[label] = lesion


def lesion_class(label: str) -> LesionClass:
    """The coding of a finding label; unknown labels are coded as a generic lesion named after the label."""
    known = LESIONS.get(label)
    if known is not None:
        return known
    return LesionClass(LESION, LESION, INTRACRANIAL, label.replace("_", " "))


# Finding sites (CID 7151 anatomic structures) by the region phrases of ``inference.atlas.REGION_NAMES``.
SITES: dict[str, Code] = {
    "frontal lobe": codes.SCT.FrontalLobe,
    "parietal lobe": codes.SCT.ParietalLobe,
    "temporal lobe": codes.SCT.TemporalLobe,
    "occipital lobe": codes.SCT.OccipitalLobe,
    "insula": codes.SCT.Insula,
    "basal ganglia / internal capsule": local("BGIC", "Basal ganglia and internal capsule"),
    "thalamus": codes.SCT.Thalamus,
    "corpus callosum": codes.SCT.CorpusCallosum,
    "centrum semiovale": codes.SCT.CerebralWhiteMatter,
    "brainstem": codes.SCT.BrainStem,
    "cerebellum": codes.SCT.Cerebellum,
    "brain": BRAIN,
}

LATERALITY: dict[str, Code] = {
    "left": codes.SCT.Left,  # 7771000
    "right": codes.SCT.Right,  # 24028007
    "bilateral": codes.SCT.Bilateral,  # 51440002
}


def finding_site(location: str | None, laterality: str | None) -> tuple[Code, Code | None] | None:
    """(anatomic location, laterality) for a Finding's free-text location, e.g. ``"right thalamus"``.

    A leading ``left``/``right``/``bilateral`` in the text counts as laterality when ``laterality`` is not given.
    Unknown places map to "Brain" so the laterality is still reported; None when neither is known.
    """
    text = (location or "").strip().lower()
    side = (laterality or "").strip().lower() or None
    for word in LATERALITY:
        if text.startswith(word + " "):
            text = text[len(word) + 1 :].strip()
            side = side or word
    if not text and side is None:
        return None
    site = SITES.get(text, BRAIN)
    return site, LATERALITY.get(side) if side else None


# Presence (TID 1501 qualitative evaluation).
PRESENCE = codes.DCM.PresenceOfProperty  # 121052
PRESENT = codes.SCT.Present  # 52101004
ABSENT = codes.SCT.Absent  # 272519000

# Measurements (TID 300) and their UCUM units.
PROBABILITY = codes.DCM.Probability  # 122157
VOLUME = codes.SCT.Volume  # 118565006
NUMBER_OF_LESIONS = codes.SCT.NumberOfLesions  # 246206008
NO_UNITS = Code("1", "UCUM", "no units")
MILLILITER = Code("ml", "UCUM", "milliliter")
LESIONS_UNIT = Code("{lesions}", "UCUM", "lesions")

# Triage priority as a coded item in the report's Qualitative Evaluations container.
PRIORITY = codes.SCT.Priority  # 260870009
PRIORITIES: dict[str, Code] = {
    "critical": codes.SCT.Emergency,  # 25876001
    "urgent": Code("103391001", "SCT", "Urgent"),
    "routine": Code("50811001", "SCT", "Routine"),
    "none": codes.SCT.None_,  # 260413007
}
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")
SUMMARY = codes.DCM.Summary  # 121111

# Procedure reported (TID 1500) per modality.
CT_HEAD = codes.SCT.ComputedTomographyOfHead  # 303653007
IMAGING_PROCEDURE: dict[str, Code] = {
    "CT": CT_HEAD,
    "MR": Code("113091000", "SCT", "Magnetic resonance imaging"),
}

# Contributing Equipment purpose (IHE AIR: the algorithm that processed the images).
PROCESSING_EQUIPMENT = codes.DCM.ProcessingEquipment  # 109102


def coded(code: Code) -> CodedConcept:
    return CodedConcept.from_code(code)


def priority_code(priority: str) -> Code:
    """The coded triage priority; raises ValueError naming the allowed values."""
    try:
        return PRIORITIES[priority]
    except KeyError:
        raise ValueError(f"priority must be one of {sorted(PRIORITIES)}, got {priority!r}") from None
