"""check joins an HPA to its Deployment across input files (issue 13.2)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgfunnel.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def _in_fixtures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(FIXTURES)


def test_hpa_in_another_file_raises_the_worst_case(capsys: pytest.CaptureFixture[str]) -> None:
    """4 replicas x pool 100 passed as 400; the HPA next door allows 10 replicas: 1000."""
    code, out, _ = run(
        capsys, "check", "deployment-api.yaml", "hpa-api.yaml", "--max-connections", "600"
    )
    assert code == 1
    assert "(10 + 0 surge) x 1 proc x (100 + 0)" in out
    assert "maxReplicas 10 from HorizontalPodAutoscaler api (hpa-api.yaml:2)" in out
    assert "FAIL PGF001: worst-case server connections 1000 > 0.8 x 597 usable = 477" in out


def test_file_order_and_one_file_give_the_same_verdict(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    both = tmp_path / "both.yaml"
    both.write_text(
        (FIXTURES / "deployment-api.yaml").read_text()
        + "---\n"
        + (FIXTURES / "hpa-api.yaml").read_text()
    )
    verdicts = []
    for files in (
        ["deployment-api.yaml", "hpa-api.yaml"],
        ["hpa-api.yaml", "deployment-api.yaml"],
        [str(both)],
    ):
        code, out, _ = run(capsys, "check", *files, "--max-connections", "600")
        verdicts.append((code, out.count("server connections (worst case)                1000")))
    assert verdicts == [(1, 1)] * 3


def test_hpa_without_its_workload_is_noted(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "check", "hpa-api.yaml", "helm-values-24x20.yaml", "--max-connections", "2000"
    )
    assert code == 0
    assert "note: HorizontalPodAutoscaler api (hpa-api.yaml:2) scales api, which is not in" in out
