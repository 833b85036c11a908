"""triage-node: a DICOM triage daemon for brain CT and MR."""

__version__ = "0.1.0"
