import pytest

from nnscreener.evaluation.report import format_results_table


def _summary(auroc, per_kind):
    return {"settings": {"max_fpr": 0.3},
            "dataset": {"auroc": auroc, "partial_auroc": 0.2, "aupro": None},
            "per_kind": {k: {"auroc": v} for k, v in per_kind.items()}}


def test_table_has_a_row_per_method_and_a_column_per_kind():
    table = format_results_table({"model": _summary(0.81234, {"nodule": 0.9}),
                                  "floor": _summary(0.6, {"nodule": 0.7, "bone": 0.55})})
    lines = table.splitlines()
    assert lines[0] == "| method | AUROC | AUROC@0.3 | AUPRO@0.3 |"
    assert "| model | 0.812 | 0.200 | - |" in lines
    assert "| method | nodule | bone |" in lines
    assert "| model | 0.900 | - |" in lines
    assert "| floor | 0.700 | 0.550 |" in lines


def test_empty_input_raises():
    with pytest.raises(ValueError):
        format_results_table({})
