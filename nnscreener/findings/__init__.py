"""From anomaly maps to findings: thresholds calibrated on normal scans, 26-connected findings with their table,
DICOM-SEG output and a per-scan report (docs/design.md C13, C14)."""
