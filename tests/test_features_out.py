"""Features out: embed (one and two processes), retrieval and clustering metrics, maps, curves."""

import csv
import json
import logging
import math
import os
import shutil
import socket
import sys

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from sslvit.cli import main
from sslvit.evaluate.cluster import cluster_scores, kmeans
from sslvit.evaluate.embed import load_embeddings
from sslvit.evaluate.retrieval import retrieval_metrics, search
from sslvit.viz import curve_panels
from tests.test_cli import TINY

# retrieval metrics


def test_retrieval_metrics_match_hand_computed_ranks():
    index = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    index_labels = torch.tensor([0, 1, 0, 1])
    queries = torch.tensor([[2.0, 1.0], [0.0, 1.0], [1.0, 0.0]])
    query_labels = torch.tensor([0, 0, 2])
    # query 0 ranks 2 (A), 0 (A), 1, 3: AP 1, a hit at k=1.
    # query 1 ranks 1 (B, sim 1), 2 (A, 0.71), then 0 (A) and 3 (B) tie at 0 and keep index
    # order: relevant at ranks 2 and 3, AP = (1/2 + 2/3) / 2 = 7/12, no hit at k=1.
    # query 2's class is absent from the index: left out of both metrics.
    at1 = retrieval_metrics(index, index_labels, queries, query_labels, k=1)
    assert at1["recall@1"] == pytest.approx(0.5)
    assert at1["mAP"] == pytest.approx((1 + 7 / 12) / 2)
    assert at1["n_scored"] == 2 and at1["n_unmatched"] == 1
    at2 = retrieval_metrics(index, index_labels, queries, query_labels, k=2)
    assert at2["recall@2"] == pytest.approx(1.0) and at2["mAP"] == at1["mAP"]
    _, ids = search(index, queries, k=4)
    assert ids[1].tolist() == [1, 2, 0, 3]


def test_a_query_in_the_index_never_retrieves_itself():
    x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.6, 0.8], [0.0, 1.0]])
    labels = torch.tensor([0, 1, 0, 1])
    own = torch.arange(4)
    # Without itself, each item ranks the others: 0 -> 1 (.8), 2 (.6), 3; 1 -> 2 (.96), 0, 3;
    # 2 -> 1, 3, 0; 3 -> 2, 1, 0. Its one relevant item sits at rank 2, 3, 3, 2.
    metrics = retrieval_metrics(x, labels, x, labels, k=2, exclude=own)
    assert metrics["mAP"] == pytest.approx((1 / 2 + 1 / 3 + 1 / 3 + 1 / 2) / 4)
    assert metrics["recall@2"] == pytest.approx(0.5)
    sims, ids = search(x, x, k=3, exclude=own)
    assert ids.tolist() == [[1, 2, 3], [2, 0, 3], [1, 3, 0], [2, 1, 0]]
    assert sims[1, 0].item() == pytest.approx(0.96)
    assert search(x, x, k=1)[1].flatten().tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="k=4"):
        search(x, x, k=4, exclude=own)


# clustering metrics


def test_cluster_scores_match_hand_computed_values():
    labels = torch.tensor([0, 0, 0, 1, 1, 1])
    clusters = torch.tensor([0, 0, 1, 1, 2, 2])
    scores = cluster_scores(labels, clusters)
    # purity: clusters {0,0}, {0,1}, {1,1} -> (2 + 1 + 2) / 6
    assert scores["purity"] == pytest.approx(5 / 6)
    # ARI: pairs together in both 2, in labels 6, in clusters 3, of 15; expected 6 * 3 / 15
    assert scores["ari"] == pytest.approx((2 - 1.2) / (4.5 - 1.2))
    # NMI: MI = 2/3 ln 2, H(labels) = ln 2, H(clusters) = ln 3
    assert scores["nmi"] == pytest.approx((2 / 3) * math.log(2) / (math.log(6) / 2))
    same = cluster_scores(labels, 5 - labels)
    assert same == pytest.approx({"nmi": 1.0, "ari": 1.0, "purity": 1.0})


def test_nmi_and_ari_agree_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        labels = torch.randint(0, 4, (40,), generator=g)
        clusters = torch.randint(0, 3, (40,), generator=g)
        scores = cluster_scores(labels, clusters)
        assert scores["nmi"] == pytest.approx(
            metrics.normalized_mutual_info_score(labels, clusters)
        )
        assert scores["ari"] == pytest.approx(metrics.adjusted_rand_score(labels, clusters))


def test_kmeans_finds_separate_groups_and_repeats_with_its_seed():
    g = torch.Generator().manual_seed(1)
    centres = torch.tensor([[5.0, 0.0], [-5.0, 0.0], [0.0, 5.0]])
    x = torch.cat([c + 0.3 * torch.randn(15, 2, generator=g) for c in centres])
    truth = torch.arange(3).repeat_interleave(15)
    assign, centroids, _ = kmeans(x, 3, seed=0)
    assert cluster_scores(truth, assign)["ari"] == 1.0 and centroids.shape == (3, 2)
    assert torch.equal(kmeans(x, 3, seed=0)[0], assign)


# embed


@pytest.fixture(scope="module")
def run_dir(digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("features") / "run"
    assert main(["pretrain", "--data", str(digits_folder), "--out", str(out), *TINY]) == 0
    return out


def _small_folder(digits_folder, root, n):
    """`n` digit files spread over two class folders."""
    files = sorted(digits_folder.rglob("*.png"))
    for k, png in enumerate(files[:: len(files) // n][:n]):
        target = root / ("a" if k % 2 else "b") / f"{k:02d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(png, target)
    return root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _embed_worker(rank, world, jobs, encoder):
    from sslvit.evaluate.embed import embed_folder

    torch.set_num_threads(1)
    for port, data, out in jobs:
        os.environ.update(
            RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
        )  # fmt: skip
        written = embed_folder(encoder, data, out, tokens="cls", batch_size=2, device="cpu")
        assert (written is not None) == (rank == 0)


def test_two_processes_embed_every_file_once_in_order(run_dir, digits_folder, tmp_path):
    odd = _small_folder(digits_folder, tmp_path / "odd", 7)
    one = _small_folder(digits_folder, tmp_path / "one", 1)
    jobs = [
        (_free_port(), str(odd), str(tmp_path / "odd.npy")),
        (_free_port(), str(one), str(tmp_path / "one.npy")),  # rank 1 has nothing to do
    ]
    mp.spawn(_embed_worker, args=(2, jobs, str(run_dir)), nprocs=2, join=True)

    two = load_embeddings(tmp_path / "odd.npy")
    expected = sorted(p.relative_to(odd).as_posix() for p in odd.rglob("*.png"))
    assert two.paths == expected and len(set(two.paths)) == 7
    assert two.labels == [p.split("/")[0] for p in expected]
    single = tmp_path / "single.npy"
    assert main(["embed", "--encoder", str(run_dir), "--data", str(odd), "--out", str(single),
                 "--tokens", "cls", "--device", "cpu", "--workers", "0"]) == 0  # fmt: skip
    assert torch.allclose(load_embeddings(single).features, two.features, atol=1e-5)
    alone = load_embeddings(tmp_path / "one.npy")
    assert alone.paths == ["b/00.png"] and alone.features.shape == (1, 192)


# each command end to end


@pytest.fixture(scope="module")
def features(run_dir, digits_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("feats") / "feats.parquet"
    assert main(["embed", "--encoder", str(run_dir), "--data", str(digits_folder),
                 "--out", str(out), "--tokens", "mean", "--device", "cpu",
                 "--workers", "0"]) == 0  # fmt: skip
    return out


def test_embed_writes_paths_labels_and_features_in_file_order(features, digits_folder, run_dir):
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(features)
    assert table.column_names == ["path", "label", "feature"]
    names = sorted(p.relative_to(digits_folder).as_posix() for p in digits_folder.rglob("*.png"))
    assert table.column("path").to_pylist() == names
    assert table.column("label").to_pylist() == [n.split("/")[0] for n in names]
    loaded = load_embeddings(features)
    assert loaded.features.shape == (120, 192) and torch.isfinite(loaded.features).all()
    assert loaded.meta["tokens"] == "mean" and loaded.meta["encoder"] == str(run_dir.resolve())


def test_patch_tokens_keep_the_grid_and_are_refused_for_vectors(run_dir, digits_folder, tmp_path):
    out = tmp_path / "patch.npy"
    assert main(["embed", "--encoder", str(run_dir), "--data", str(digits_folder / "3"),
                 "--out", str(out), "--tokens", "patch", "--device", "cpu"]) == 0  # fmt: skip
    patches = load_embeddings(out)
    assert patches.features.shape == (12, 16, 192) and patches.labels is None
    assert patches.meta["patch_grid"] == [4, 4]
    assert np.load(out).shape == (12, 16, 192)
    assert json.loads(out.with_suffix(".json").read_text())["paths"][0] == "000.png"
    with pytest.raises(ValueError, match="patch tokens"):
        patches.vectors(out)


def test_retrieve_the_index_against_itself(features, tmp_path, capsys):
    out = tmp_path / "neighbours.csv"
    args = ["retrieve", "--index", str(features), "--query", str(features), "--k", "5"]
    assert main([*args, "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    metrics = result["metrics"]
    assert metrics["n_scored"] == 120 and 0 < metrics["mAP"] <= 1
    assert 0 < metrics["recall@5"] <= 1
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 600 and all(r["query"] != r["path"] for r in rows)
    assert json.loads(out.with_suffix(".json").read_text())["metrics"] == metrics


def test_retrieve_with_images_uses_the_recorded_encoder(features, digits_folder, capsys):
    one = digits_folder / "7" / "004.png"
    assert main(["retrieve", "--index", str(features), "--query", str(one), "--k", "3",
                 "--device", "cpu"]) == 0  # fmt: skip
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["n_queries"] == 1 and result["metrics"] is None
    assert "7/004.png" not in "\n".join(lines[:-1])  # the image itself is in the index
    folder = ["retrieve", "--index", str(features), "--query", str(digits_folder / "7")]
    assert main([*folder, "--k", "3", "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n_queries"] == 12


def test_retrieve_warns_when_index_and_queries_come_from_different_tokens(
    features, run_dir, digits_folder, tmp_path, caplog
):
    cls = tmp_path / "cls.npy"
    assert main(["embed", "--encoder", str(run_dir), "--data", str(digits_folder / "7"),
                 "--out", str(cls), "--tokens", "cls", "--device", "cpu"]) == 0  # fmt: skip
    with caplog.at_level("WARNING", logger="sslvit"):
        assert main(["retrieve", "--index", str(features), "--query", str(cls), "--k", "3"]) == 0
    assert any("tokens mean" in r.message and "cls" in r.message for r in caplog.records)


def test_cluster_writes_assignments_and_scores(features, tmp_path, capsys):
    out = tmp_path / "clusters.csv"
    args = ["cluster", "--features", str(features), "--k", "10", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= result["nmi"] <= 1 and -1 <= result["ari"] <= 1 and 0.1 <= result["purity"] <= 1
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 120 and set(rows[0]) == {"path", "cluster", "label"}
    assert {int(r["cluster"]) for r in rows} == set(range(10))
    assert json.loads(out.with_suffix(".json").read_text())["nmi"] == result["nmi"]


def test_show_embedding_and_curves(features, run_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "umap", None)  # UMAP's first call compiles for ~20 s
    out = tmp_path / "map.png"
    assert main(["show", "embedding", "--features", str(features), "--out", str(out)]) == 0
    assert out.stat().st_size > 5000
    assert any("umap-learn is not installed" in r.getMessage() for r in caplog.records)
    curves = tmp_path / "curves.png"
    assert main(["show", "curves", "--run", str(run_dir), "--out", str(curves)]) == 0
    assert curves.stat().st_size > 5000


def test_curves_show_the_evaluations_of_finetune_and_segment_epochs():
    records = [
        {"kind": "train", "step": 10, "loss": 2.0, "lr": 1e-3, "images_per_s": 50.0},
        {"kind": "epoch", "step": 10, "epoch": 0, "stage": 1, "loss": 1.9, "miou": 40.0},
        {"kind": "epoch", "step": 20, "epoch": 1, "stage": 2, "loss": 1.5, "miou": 55.0},
    ]
    panels = curve_panels(records)
    assert list(panels) == ["loss", "learning rate", "evaluation"]
    assert panels["evaluation"] == {"miou": ([10, 20], [40.0, 55.0])}
    assert panels["loss"]["epoch mean"] == ([10, 20], [1.9, 1.5])


def test_one_image_folder_and_unlabelled_data(run_dir, digits_folder, tmp_path, capsys, caplog):
    one = _small_folder(digits_folder, tmp_path / "one", 1) / "b"
    out = tmp_path / "one.npy"
    assert main(["embed", "--encoder", str(run_dir), "--data", str(one), "--out", str(out),
                 "--device", "cpu"]) == 0  # fmt: skip
    assert load_embeddings(out).paths == ["00.png"]
    capsys.readouterr()
    caplog.set_level(logging.INFO, logger="sslvit")
    unlabelled = tmp_path / "three.npy"
    assert main(["embed", "--encoder", str(run_dir), "--data", str(digits_folder / "3"),
                 "--out", str(unlabelled), "--device", "cpu"]) == 0  # fmt: skip
    args = ["retrieve", "--index", str(unlabelled), "--query", str(unlabelled), "--k", "2"]
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["metrics"] is None
    assert any("recall@2 and mAP skipped" in r.getMessage() for r in caplog.records)
    assert main(["cluster", "--features", str(unlabelled), "--k", "2"]) == 0
    assert "nmi" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (tmp_path / "three-clusters.csv").is_file()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["cluster", "--features", "/no/such/feats.npy", "--k", "2"], "/no/such/feats.npy"),
        (["retrieve", "--index", "/no/such/f.parquet", "--query", "x.npy"], "/no/such/f.parquet"),
        (["cluster", "--features", "FEATS", "--k", "121"], "--k 121"),
        (["retrieve", "--index", "FEATS", "--query", "FEATS", "--k", "120"], "k=120"),
        (["embed", "--encoder", "RUN", "--data", "DATA", "--out", "f.csv"], "f.csv"),
        (["show", "curves", "--run", "/no/such/run", "--out", "c.png"], "/no/such/run"),
        (["show", "embedding", "--out", "m.png"], "--features"),
    ],
)
def test_bad_input_is_one_clear_line(args, message, features, run_dir, digits_folder, capsys):
    names = {"FEATS": str(features), "RUN": str(run_dir), "DATA": str(digits_folder)}
    assert main([names.get(a, a) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_parquet_without_pyarrow_names_the_extra(monkeypatch, run_dir, digits_folder, capsys):
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    args = ["embed", "--encoder", str(run_dir), "--data", str(digits_folder), "--out", "f.parquet"]
    assert main(args) == 2
    assert "sslvit[parquet]" in capsys.readouterr().err
