"""sample.py end to end on a small saved pipeline."""

import numpy as np
import pytest
from PIL import Image
from test_pipeline import pixel_pipe

import sample


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("pipe")
    pixel_pipe(sampling=dict(num_inference_steps=3)).save_pretrained(path)
    return path


def run(model_dir, out, *extra):
    argv = ["--model", str(model_dir), "--class-labels", "3", "alias7", "--per-label", "2", "--out", str(out)]
    return sample.main(sample.parse_args(argv + list(extra)))


def test_writes_images_and_grid_independent_of_batch_size(model_dir, tmp_path):
    written = run(model_dir, tmp_path / "a", "--batch-size", "3", "--cfg", "2.0", "--height", "8", "--width", "12")
    assert [p.rsplit("/", 1)[1] for p in written] == [
        "00000_3_0.png",
        "00001_3_1.png",
        "00002_7_2.png",
        "00003_7_3.png",
    ]
    grid = Image.open(tmp_path / "a" / "grid.png")
    assert grid.size == (2 * (12 + 2) + 2, 2 * (8 + 2) + 2)  # two labels (rows) x two images
    again = run(model_dir, tmp_path / "b", "--batch-size", "1", "--cfg", "2.0", "--height", "8", "--width", "12")
    for a, b in zip(written, again):
        assert np.array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))
    other_seed = run(model_dir, tmp_path / "c", "--seed", "5", "--cfg", "2.0", "--height", "8", "--width", "12")
    assert not np.array_equal(np.asarray(Image.open(written[0])), np.asarray(Image.open(other_seed[0])))


def test_missing_model_and_unknown_class_are_clear_errors(model_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="no pipeline directory"):
        run(tmp_path / "nowhere", tmp_path / "o")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        run(tmp_path / "empty", tmp_path / "o")
    with pytest.raises(ValueError, match="unknown class name"):
        sample.main(sample.parse_args(["--model", str(model_dir), "--class-labels", "dog", "--out", str(tmp_path)]))
