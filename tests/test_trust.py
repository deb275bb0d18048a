"""Trust in a model: operating points, per-group (fairness) reports and what each layer learned."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as skm

from tfpipeline.cli import main
from tfpipeline.decision import DecisionRule
from tfpipeline.errors import UserError
from tfpipeline.evaluation.groups import group_report, read_groups
from tfpipeline.evaluation.operating import operating_points

NAMES = ("fake", "real")


def scored(n=400, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    fake_score = np.clip(0.35 * (y == 0) + rng.normal(0.35, 0.2, n), 0, 1)
    return y, np.stack([fake_score, 1 - fake_score], axis=1)


def test_operating_points_meet_their_recall_targets():
    y, probs = scored()
    rule = DecisionRule.for_classes("0.5", NAMES, "fake")
    rows = {row["name"]: row for row in operating_points(y, probs, rule)}
    assert rows["run's threshold"]["threshold"] == 0.5
    flagged = probs[:, 0] >= 0.5
    assert rows["run's threshold"]["recall"] == pytest.approx(skm.recall_score(y == 0, flagged))
    assert rows["run's threshold"]["fpr"] == pytest.approx(np.mean(flagged[y == 1]))
    for target in (0.90, 0.95, 0.99):
        row = rows[f"recall >= {target:.2f}"]
        assert row["recall"] >= target
        assert row["precision"] == pytest.approx(skm.precision_score(y == 0, probs[:, 0] >= row["threshold"]))
    assert operating_points(y, np.eye(3)[y], DecisionRule.for_classes("0.5", ("a", "b", "c"))) == []


def test_group_metrics_equal_sklearn_on_each_subset(tmp_path, caplog):
    y, probs = scored(600, seed=1)
    files = [f"/data/img_{i}.jpg" for i in range(len(y))]
    groups = np.array(["abc"[i % 3] for i in range(len(y))], dtype=object)
    groups[:10] = "tiny"
    table = pd.DataFrame({"path": files, "lighting": groups})
    table.loc[len(table)] = ["/elsewhere/not_in_split.jpg", "a"]
    table.to_csv(tmp_path / "groups.csv", index=False)
    with caplog.at_level(logging.WARNING):
        read = read_groups(tmp_path / "groups.csv", files)
    assert "1 row(s) name files that are not in the evaluated split" in caplog.text
    rule = DecisionRule.for_classes("0.5", NAMES, "fake")
    report = group_report(read, y, probs, rule, bootstrap=100)  # fewer resamples: a quicker test
    entry = report["lighting"]
    assert entry["too_small"] == ["tiny"] and report["unmatched_rows"] == 1
    positive, predicted = (y == 0), probs[:, 0] >= 0.5
    for name in ("a", "b", "c"):
        subset = groups == name
        row = entry["groups"][name]
        assert row["support"] == subset.sum()
        assert row["accuracy"]["value"] == pytest.approx(
            skm.accuracy_score(positive[subset], predicted[subset])
        )
        assert row["tpr"]["value"] == pytest.approx(skm.recall_score(positive[subset], predicted[subset]))
        assert row["fpr"]["value"] == pytest.approx(np.mean(predicted[subset & ~positive]))
        assert row["auc"]["value"] == pytest.approx(skm.roc_auc_score(positive[subset], probs[subset, 0]))
        assert row["accuracy"]["low"] <= row["accuracy"]["value"] <= row["accuracy"]["high"]
    tprs = [entry["groups"][g]["tpr"]["value"] for g in "abc"]
    fprs = [entry["groups"][g]["fpr"]["value"] for g in "abc"]
    assert entry["equalized_odds_difference"] == pytest.approx(
        max(max(tprs) - min(tprs), max(fprs) - min(fprs))
    )
    assert entry["largest_gap"]["gap"] >= 0


def test_groups_file_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("file,group\na.jpg,x\n")
    with pytest.raises(UserError, match="needs a 'path' column"):
        read_groups(bad, ["a.jpg"])
    only = tmp_path / "only.csv"
    only.write_text("path\na.jpg\n")
    with pytest.raises(UserError, match="at least one group column"):
        read_groups(only, ["a.jpg"])


def test_evaluate_groups_and_explain_commands(tiny_run, tmp_path, capsys):
    run = tiny_run()
    val = pd.read_csv(run / "splits" / "val.csv")
    groups = tmp_path / "groups.csv"
    pd.DataFrame({"path": val["path"], "half": ["x", "y"] * (len(val) // 2)}).to_csv(groups, index=False)
    code = main(
        ["evaluate", str(run), "--split", "val", "--groups", str(groups), "--out", str(tmp_path / "ev")]
    )
    assert code == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["groups"]["half"]["too_small"] == ["x", "y"]  # a tiny split: reported, not hidden
    assert (tmp_path / "ev" / "groups.png").is_file() and metrics["operating_points"]

    assert (
        main(["explain", str(run), "--out", str(tmp_path / "explain"), "--channels", "4", "--top", "3"]) == 0
    )
    written = sorted(p.name for p in (tmp_path / "explain").iterdir())
    assert written == [*(f"feature_maps_conv{i}.png" for i in range(1, 5)), "filters.png", "top_images.png"]
    assert main(["explain", str(run), "--layers", "nope"]) == 2
    assert "not convolutions of the model" in capsys.readouterr().err
