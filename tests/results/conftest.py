"""Fixtures for the results tests: the phantom CT written once per module and the objects built from it."""

from __future__ import annotations

from pathlib import Path

import phantom
import pytest

from triage_node.results.build import ResultFile, build_results


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> phantom.Case:
    return phantom.write_case(tmp_path_factory.mktemp("src"))


@pytest.fixture(scope="module")
def positive(case: phantom.Case, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ResultFile]:
    out = tmp_path_factory.mktemp("positive")
    files = build_results(
        case.sources, case.volume, phantom.positive_outputs(case.volume), phantom.ALGORITHMS, phantom.identity(),
        "critical", "ct_head", out,
    )
    return {f.kind: f for f in files}


@pytest.fixture(scope="module")
def negative(case: phantom.Case, tmp_path_factory: pytest.TempPathFactory) -> dict[str, ResultFile]:
    out: Path = tmp_path_factory.mktemp("negative")
    files = build_results(
        case.sources, case.volume, phantom.negative_outputs(case.volume), phantom.ALGORITHMS,
        phantom.identity("negative"), "none", "ct_head", out,
    )
    return {f.kind: f for f in files}
