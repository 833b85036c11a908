"""Operations: systemd notification, Prometheus metrics, logging set-up, disk guard, spool retention, and the
DICOM Conformance Statement generator. See docs/operations.md."""
