"""RSNA 2019 label CSV reader on a small made-up CSV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from triage_lab.training.rsna import RsnaFormatError, read_labels

SUBS = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]


def _write(tmp_path: Path, rows: list[str]) -> Path:
    p = tmp_path / "stage_2_train.csv"
    p.write_text("ID,Label\n" + "\n".join(rows) + "\n")
    return p


def test_reads_six_labels_per_image_in_class_order(tmp_path: Path) -> None:
    rows = [f"ID_63eb1e259_{s},{int(s in ('subdural', 'any'))}" for s in SUBS]
    rows += [f"ID_2669954a7_{s},0" for s in SUBS]
    labels = read_labels(_write(tmp_path, rows))
    assert set(labels) == {"63eb1e259", "2669954a7"}
    # CLASSES order: any, epidural, intraparenchymal, intraventricular, subarachnoid, subdural
    assert np.array_equal(labels["63eb1e259"], [1, 0, 0, 0, 0, 1])
    assert not labels["2669954a7"].any()


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (["ID_abc_chronic,1"], "subtype in"),
        (["ID_abc_any,2"], "Label must be 0 or 1"),
        (["abc_any,1"], "ID must be 'ID_<id>_<subtype>'"),
        (["ID_abc_any,1"], "lacks rows for"),
    ],
)
def test_rejects_malformed_rows(tmp_path: Path, rows: list[str], message: str) -> None:
    with pytest.raises(RsnaFormatError, match=message):
        read_labels(_write(tmp_path, rows))


def test_rejects_missing_header(tmp_path: Path) -> None:
    p = tmp_path / "x.csv"
    p.write_text("ID_abc_any,1\n")
    with pytest.raises(RsnaFormatError, match="first line must be 'ID,Label'"):
        read_labels(p)
