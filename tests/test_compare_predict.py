"""`tfpipeline compare` over two tiny runs and `tfpipeline predict`: CSV format and ordering,
predictions identical to the training pipeline's, bad files named, exit codes."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from tfpipeline.cli import main
from tfpipeline.config import ModelConfig, RunConfig


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> dict[str, Path]:
    """A 1-epoch small_cnn run (`vanilla`), plus a copy relabelled as batch norm + dropout.

    Only one model is trained (to keep the module fast); the copy gets a bn+dp config, more
    parameters and different curves, which is all `compare` reads. `data` is the split folder
    (10 / 4 / 2 images per class) the run was trained on.
    """
    vanilla = tiny_run(counts=(("train", 10), ("val", 4), ("test", 2)))
    variant = tmp_path_factory.mktemp("compare_predict") / "bn_dp" / vanilla.name
    shutil.copytree(vanilla, variant)
    config = yaml.safe_load((variant / "config.yaml").read_text())
    config["model"].update(batchnorm=True, dropout=True)
    (variant / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    info = json.loads((variant / "run.json").read_text())
    info["trainable_params"] += 96
    (variant / "run.json").write_text(json.dumps(info))
    history = pd.read_csv(variant / "history.csv")
    for column in ("loss", "val_loss"):
        history[column] *= 0.9
    history.to_csv(variant / "history.csv", index=False)
    return {"vanilla": vanilla, "bn+dp": variant, "data": tiny_run.data(vanilla)}


# ----------------------------------------------------------------------------- compare


def test_run_labels_and_dedup():
    from tfpipeline.evaluation.compare import run_label, unique_labels

    def label(**model):
        return run_label(RunConfig(model=ModelConfig(**model)))

    assert label() == "vanilla"
    assert label(batchnorm=True) == "bn"
    assert label(dropout=True) == "dp"
    assert label(batchnorm=True, dropout=True) == "bn+dp"
    assert label(name="resnet50_head", batchnorm=True) == "resnet50_head"
    assert unique_labels(["bn", "bn", "vanilla", "bn"]) == ["bn", "bn-2", "vanilla", "bn-3"]


def test_compare_two_runs(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    metrics = ["loss", "accuracy", "auc"]
    code = main(
        [
            "compare",
            str(runs["vanilla"]),
            str(runs["bn+dp"]),
            "--out",
            str(out),
            "--metrics",
            ",".join(metrics),
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == sorted(f"compare_{m}.png" for m in metrics)
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (out / "comparison.md").read_text()
    assert "| vanilla |" in markdown and "| bn+dp |" in markdown and "| vanilla |" in printed
    with open(out / "comparison.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["run"] for r in rows] == ["vanilla", "bn+dp"]
    for row, run in zip(rows, (runs["vanilla"], runs["bn+dp"]), strict=True):
        info = json.loads((run / "run.json").read_text())
        val = json.loads((run / "metrics.json").read_text())["val"]
        assert int(row["trainable_params"]) == info["trainable_params"]
        assert int(row["epochs"]) == 1
        assert float(row["val_accuracy"]) == pytest.approx(val["accuracy"])
        assert float(row["val_f1"]) == pytest.approx(val["f1"])
        assert float(row["median_epoch_seconds"]) > 0
    assert int(rows[1]["trainable_params"]) > int(rows[0]["trainable_params"])  # batch norm adds weights


def test_compare_default_metrics_and_labels(runs, tmp_path):
    from tfpipeline.evaluation.compare import compare_runs

    result = compare_runs([runs["vanilla"], runs["vanilla"]], labels=["a", "a"], out=tmp_path / "c")
    assert list(result.table["run"]) == ["a", "a-2"]
    assert {"loss", "accuracy", "auc", "f1"} <= {k for k in result.files if k not in ("csv", "markdown")}


def test_compare_user_errors(runs, tmp_path, capsys):
    not_a_run = tmp_path / "plain"
    not_a_run.mkdir()
    assert main(["compare", str(runs["vanilla"]), str(not_a_run), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(not_a_run) in err and "Traceback" not in err
    assert main(["compare", str(runs["vanilla"]), "--labels", "a,b", "--out", str(tmp_path / "o")]) == 2
    assert main(["compare", str(runs["vanilla"]), "--metrics", "nope", "--out", str(tmp_path / "o")]) == 2
    assert "nope" in capsys.readouterr().err


# ----------------------------------------------------------------------------- predict


def _numbered_inputs(runs, folder: Path) -> list[Path]:
    """Copies of val images named 10, 2, 1 (a folder) and 3 (nested)."""
    sources = sorted((runs["data"] / "val").rglob("*.*"))
    names = ["10", "2", "1", "sub/3"]
    paths = []
    for name, source in zip(names, sources[::2], strict=False):
        target = folder / f"{name}{source.suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, target)
        paths.append(target)
    (folder / "notes.txt").write_text("not an image, ignored in folders")
    return paths


def _read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="") as handle:
        return list(csv.reader(handle))


def test_predict_csv_format(runs, tmp_path, capsys):
    inputs = tmp_path / "in"
    _numbered_inputs(runs, inputs)
    csv_path = tmp_path / "submission.csv"
    assert main(["predict", str(runs["vanilla"]), str(inputs), "--csv", str(csv_path)]) == 0
    rows = _read_csv(csv_path)
    assert rows[0] == ["ID", "TARGET"]
    assert [r[0] for r in rows[1:]] == ["1", "2", "3", "10"]  # numeric order, one row per image
    assert all(r[1] in ("0", "1") for r in rows[1:])
    assert (
        main(["predict", str(runs["vanilla"]), str(inputs), "--csv", str(csv_path), "--label-format", "name"])
        == 0
    )
    named = _read_csv(csv_path)
    assert [r[0] for r in named] == [r[0] for r in rows]
    assert [r[1] for r in named[1:]] == [["blue", "red"][int(r[1])] for r in rows[1:]]

    assert main(["predict", str(runs["vanilla"]), str(inputs)]) == 0
    lines = [line.split("\t") for line in capsys.readouterr().out.strip().splitlines()[-4:]]
    assert [Path(line[0]).stem for line in lines] == ["1", "10", "2", "3"]  # path order (sorted files)
    assert all(c in ("blue", "red") and 0.0 <= float(p) <= 1.0 for _, c, p, *_ in lines)
    # The run fitted its out-of-domain detector: every line adds its score and verdict.
    assert all(len(line) == 5 and line[4] in ("in_domain", "out_of_domain") for line in lines)


def test_submission_rows_ordering_and_duplicates():
    from tfpipeline.errors import UserError
    from tfpipeline.evaluation.predict import submission_rows

    paths = [Path("b/img10.png"), Path("a/img2.png"), Path("img1.jpg")]
    rows = submission_rows(paths, np.array([1, 0, 1]), ["x", "y"], "name")
    assert rows == [("img1", "y"), ("img10", "y"), ("img2", "x")]  # lexicographic: not all integers
    assert [r[0] for r in submission_rows([Path("10.png"), Path("2.png")], np.array([0, 1]), "xy")] == [
        "2",
        "10",
    ]
    with pytest.raises(UserError, match="duplicate ID '7'"):
        submission_rows([Path("a/7.png"), Path("b/7.jpg")], np.array([0, 1]), "xy")


def test_submission_ids_are_integers_like_the_brief():
    from tfpipeline.errors import UserError
    from tfpipeline.evaluation.predict import submission_rows

    paths = [Path("test/00002.jpg"), Path("test/00000.jpg"), Path("test/00001.jpg")]
    labels = np.array([2, 0, 4])
    assert submission_rows(paths, labels, "abcde") == [("0", "0"), ("1", "4"), ("2", "2")]
    assert submission_rows(paths, labels, "abcde", id_format="stem")[0] == ("00000", "0")
    with pytest.raises(UserError, match="duplicate ID '7'"):  # 007 and 7 are the same integer ID
        submission_rows([Path("a/007.png"), Path("b/7.jpg")], np.array([0, 1]), "xy")
    with pytest.raises(UserError, match="--id-format int: img1.jpg"):
        submission_rows([Path("img1.jpg")], np.array([0]), "xy", id_format="int")


def test_predict_duplicate_stems_exit_2(runs, tmp_path, capsys):
    inputs = tmp_path / "dup"
    for sub in ("a", "b"):
        (inputs / sub).mkdir(parents=True)
        shutil.copy(next((runs["data"] / "val" / "red").glob("*.png")), inputs / sub / "5.png")
    assert main(["predict", str(runs["vanilla"]), str(inputs), "--csv", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "duplicate ID '5'" in err and "Traceback" not in err


def test_predict_matches_training_pipeline(runs):
    import keras

    from tfpipeline.data import load_data
    from tfpipeline.evaluation.predict import load_predictor, predict_files
    from tfpipeline.evaluation.run_report import class_probabilities
    from tfpipeline.models.precision import as_float32
    from tfpipeline.training import RunFolder

    run = RunFolder.open(runs["vanilla"])
    config = run.read_config()
    bundle = load_data(config.data, scaling=json.loads(run.run_file.read_text())["scaling"])
    # In float32, as every prediction after training, whatever precision trained the run.
    model = as_float32(keras.models.load_model(run.best_checkpoint, compile=False))
    expected = class_probabilities(model.predict(bundle.val, verbose=0), 2, bundle.info.positive_index)

    predictor = load_predictor(run.path)
    val_files = [Path(p) for p in bundle.splits["val"].paths]
    files, probs, skipped = predict_files(predictor, val_files, batch_size=3)
    assert files == val_files and skipped == []
    assert probs.shape == expected.shape == (8, 2)
    assert np.max(np.abs(probs - expected)) <= 1e-5
    threshold = json.loads(run.metrics_file.read_text())["threshold"]["value"]
    assert predictor.rule.value == threshold
    assert predictor.rule.predict(probs).tolist() == np.where(probs[:, 1] >= threshold, 1, 0).tolist()


def test_predict_bad_file(runs, tmp_path, capsys, caplog):
    inputs = tmp_path / "bad"
    good = _numbered_inputs(runs, inputs)
    broken = inputs / "broken.jpg"
    broken.write_text("this is not a JPEG")
    assert main(["predict", str(runs["vanilla"]), str(inputs)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and str(broken) in err and "Traceback" not in err

    csv_path = tmp_path / "s.csv"
    assert main(["predict", str(runs["vanilla"]), str(inputs), "--skip-bad", "--csv", str(csv_path)]) == 0
    assert str(broken) in caplog.text  # the warning lists skipped files
    assert len(_read_csv(csv_path)) == 1 + len(good)


def test_predict_user_errors(runs, tmp_path, capsys):
    assert main(["predict", str(tmp_path), str(tmp_path)]) == 2  # not a run folder, no images
    missing = tmp_path / "missing.png"
    assert main(["predict", str(runs["vanilla"]), str(missing)]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "Traceback" not in err
    assert main(["predict", str(runs["vanilla"]), str(missing), "--batch-size", "0"]) == 2
