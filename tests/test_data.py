"""Dataset loading (digits, keras.datasets, npz, folder), splits and the tf.data pipeline."""

import keras
import numpy as np
import pytest
from PIL import Image

from zoo.data import DATASET_SPECS, Split, load_dataset, make_pipeline
from zoo.data.dataset import stratified_split
from zoo.errors import ZooError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def _batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def _labels(dataset):
    return np.concatenate([y for _, y in _batches(dataset)])


def _write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def _keras_layout(n_train=40, n_test=20, shape=(8, 8), dtype=np.uint8, high=255, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_train": (rng.random((n_train, *shape)) * high).astype(dtype),
        "y_train": np.arange(n_train) % classes,
        "x_test": (rng.random((n_test, *shape)) * high).astype(dtype),
        "y_test": np.arange(n_test) % classes,
    }


# --- digits and splits -------------------------------------------------------------------------------------------


def test_digits_splits_are_real_stratified_and_uint8(digits):
    assert (len(digits.train), len(digits.val), len(digits.test)) == (1257, 270, 270)
    assert (digits.name, digits.num_classes, digits.channels, digits.default_image_size) == ("digits", 10, 1, 28)
    assert digits.class_names == [str(i) for i in range(10)]
    assert not digits.mirror_invariant  # a mirrored digit is another symbol
    for split in (digits.train, digits.val, digits.test):
        assert split.x.shape[1:] == (8, 8, 1) and split.x.dtype == np.uint8 and split.y.dtype == np.int64
        assert np.bincount(split.y, minlength=10).min() >= 0.09 * len(split)  # every class, in proportion
    assert digits.train.x.max() == 255 and digits.train.x.min() == 0


def test_digits_split_is_deterministic_by_seed(digits):
    again, other = load_dataset("digits", seed=0), load_dataset("digits", seed=1)
    np.testing.assert_array_equal(again.test.x, digits.test.x)
    np.testing.assert_array_equal(again.train.y, digits.train.y)
    assert not np.array_equal(other.test.x, digits.test.x)


def test_stratified_split_partitions_every_index_once():
    y = np.array([0] * 50 + [1] * 30 + [2] * 3)
    parts = stratified_split(y, (0.2, 0.1), seed=3)
    assert [len(p) for p in parts] == [17, 8, 58]
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    assert np.bincount(y[parts[0]]).tolist() == [10, 6, 1]  # proportional, even for the 3-sample class


# --- pipeline ----------------------------------------------------------------------------------------------------


def test_pipeline_shapes_dtypes_and_range(digits):
    batches = _batches(make_pipeline(digits.val, image_size=28, channels=1, batch_size=64, training=False, seed=0))
    assert [len(y) for _, y in batches] == [64, 64, 64, 64, 14]
    x, y = batches[0]
    assert x.shape == (64, 28, 28, 1) and x.dtype == np.float32 and y.dtype == np.int64
    assert 0.0 <= x.min() and x.max() <= 1.0 and x.max() > 0.9
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), digits.val.y)  # eval keeps the order


def test_pipeline_converts_channels_exactly():
    rng = np.random.default_rng(0)
    gray = Split(rng.integers(0, 256, (6, 5, 5, 1), dtype=np.uint8), np.zeros(6, np.int64))
    rgb = _batches(make_pipeline(gray, image_size=5, channels=3, batch_size=6, training=False, seed=0))[0][0]
    np.testing.assert_allclose(rgb, np.repeat(gray.x / 255.0, 3, axis=-1), atol=1e-6)
    back = _batches(make_pipeline(Split(rgb, gray.y), image_size=5, channels=1, batch_size=6, training=False, seed=0))
    np.testing.assert_allclose(back[0][0], gray.x / 255.0, atol=1e-6)  # luminance weights sum to 1


def test_shuffle_order_is_deterministic_by_seed_and_reshuffles_each_epoch(digits):
    def pipeline(seed, epochs=2, first_epoch=0):
        return make_pipeline(digits.val, image_size=8, channels=1, batch_size=64, training=True, seed=seed,
                             epochs=epochs, first_epoch=first_epoch)

    labels = _labels(pipeline(seed=5))
    epoch1, epoch2 = labels[: len(digits.val)], labels[len(digits.val):]
    np.testing.assert_array_equal(_labels(pipeline(seed=5)), labels)
    assert not np.array_equal(epoch1, epoch2)
    assert not np.array_equal(_labels(pipeline(seed=6, epochs=1)), epoch1)
    assert sorted(epoch1) == sorted(digits.val.y) == sorted(epoch2)
    np.testing.assert_array_equal(_labels(pipeline(seed=5, first_epoch=1)), epoch2)  # a resumed run's epoch 1


def test_training_pipeline_yields_whole_epochs_and_resumes_them_exactly(digits):
    from zoo.data import steps_per_epoch

    def batches(**epochs):
        return _batches(make_pipeline(digits.val, image_size=8, channels=1, batch_size=64, training=True, seed=3,
                                      augment=True, **epochs))

    steps = steps_per_epoch(digits.val, 64)
    assert steps == 5  # 270 images: 4 full batches and one of 14
    full = batches(epochs=3)
    assert len(full) == 3 * steps and [len(y) for _, y in full[:steps]] == [64] * 4 + [14]
    resumed = batches(epochs=3, first_epoch=2)
    for (x, y), (x_full, y_full) in zip(resumed, full[2 * steps:], strict=True):
        np.testing.assert_array_equal(x, x_full)  # same order and the same random shifts
        np.testing.assert_array_equal(y, y_full)
    endless = make_pipeline(digits.val, image_size=8, channels=1, batch_size=64, training=True, seed=3)
    assert len(list(endless.take(4 * steps))) == 4 * steps


def test_augmentation_is_seeded_training_only_and_keeps_shapes():
    x = np.random.default_rng(0).random((16, 16, 16, 3)).astype(np.float32)
    split = Split(x, np.zeros(16, np.int64))

    def images(training, augment=True, seed=0, flip=False):
        pipeline = make_pipeline(split, image_size=16, channels=3, batch_size=16, training=training, seed=seed,
                                 augment=augment, flip=flip, **({"epochs": 1} if training else {}))
        return np.sort(_batches(pipeline)[0][0].reshape(16, -1), axis=0)  # order-free comparison

    plain = images(training=True, augment=False)
    augmented = images(training=True)
    assert augmented.shape == plain.shape
    assert not np.allclose(augmented, plain)
    np.testing.assert_array_equal(images(training=True), augmented)
    assert not np.array_equal(images(training=True, seed=1), augmented)
    np.testing.assert_array_equal(images(training=False), np.sort(x.reshape(16, -1), axis=0))
    flipped = images(training=True, flip=True)
    assert flipped.shape == plain.shape and not np.array_equal(flipped, augmented)


# --- keras.datasets ----------------------------------------------------------------------------------------------


def test_keras_dataset_offline_is_one_clear_line(monkeypatch):
    def offline():
        raise Exception("URL fetch failure on https://storage.googleapis.com/mnist.npz: None -- Name not known")

    monkeypatch.setattr(keras.datasets.mnist, "load_data", offline)
    with pytest.raises(ZooError) as error:
        load_dataset("mnist")
    message = str(error.value)
    assert message.startswith("could not download mnist (offline?)")
    assert message.endswith("use --dataset digits or npz:PATH") and "\n" not in message


def test_keras_dataset_layout_and_val_split(monkeypatch):
    arrays = _keras_layout(n_train=50, n_test=10, shape=(32, 32, 3), classes=10)
    arrays["y_train"], arrays["y_test"] = arrays["y_train"][:, None], arrays["y_test"][:, None]  # cifar's (N, 1)
    layout = ((arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"]))
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: layout)
    data = load_dataset("cifar10", seed=0)
    assert (len(data.train), len(data.val), len(data.test)) == (45, 5, 10)
    assert (data.channels, data.default_image_size, data.class_names[0]) == (3, 32, "airplane")
    assert (data.default_epochs, data.mirror_invariant) == (30, True)
    assert data.train.y.shape == (45,)


def test_unknown_dataset_lists_the_valid_specs():
    with pytest.raises(ZooError) as error:
        load_dataset("imagenet")
    assert str(error.value) == f"unknown dataset 'imagenet'; use one of: {', '.join(DATASET_SPECS)}"
    with pytest.raises(ZooError, match="unknown dataset 'npz:'"):
        load_dataset("npz:")


# --- npz ---------------------------------------------------------------------------------------------------------


def test_npz_grayscale_uint8(tmp_path):
    spec = _write_npz(tmp_path / "gray.npz", **_keras_layout(), y_train_full=np.zeros(3))  # extra array ignored
    data = load_dataset(spec, seed=0)
    assert (data.channels, data.default_image_size, data.num_classes) == (1, 8, 4)
    assert not data.mirror_invariant  # unknown content: shifts only, never flips
    assert (len(data.train), len(data.val), len(data.test)) == (36, 4, 20)
    assert data.train.x.dtype == np.uint8 and data.train.x.shape[1:] == (8, 8, 1)


@pytest.mark.parametrize("high", [1.0, 255.0])
def test_npz_rgb_float_in_either_range(tmp_path, high):
    arrays = _keras_layout(shape=(6, 6, 3), dtype=np.float64, high=high)
    data = load_dataset(_write_npz(tmp_path / "rgb.npz", **arrays), seed=0)
    assert data.channels == 3 and data.train.x.dtype == np.float32
    assert 0.5 < data.train.x.max() <= 1.0
    x, _ = _batches(make_pipeline(data.test, image_size=4, channels=3, batch_size=64, training=False, seed=0))[0]
    assert x.shape == (20, 4, 4, 3) and 0.0 <= x.min() and x.max() <= 1.0


def _bad_arrays(**changes):
    arrays = _keras_layout()
    arrays.update(changes)
    return {name: value for name, value in arrays.items() if value is not None}


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        (_bad_arrays(y_test=None, x_test=None), "missing array(s) x_test, y_test; expected x_train, y_train"),
        (_bad_arrays(y_train=np.arange(39) % 4), "y_train has shape (39,); expected (40,)"),
        (_bad_arrays(x_train=np.zeros((40, 64), np.uint8)), "x_train has shape (40, 64); expected (N, H, W)"),
        (_bad_arrays(x_test=np.zeros((20, 8, 8, 2), np.uint8)), "x_test has shape (20, 8, 8, 2)"),
        (_bad_arrays(x_test=np.zeros((20, 9, 9), np.uint8)), "x_train images are (8, 8, 1) but x_test"),
        (_bad_arrays(x_train=np.full((40, 8, 8), 300.0)), "x_train values span 300..300; expected 0..1 or 0..255"),
        (_bad_arrays(y_test=-np.ones(20, int)), "y_test must hold class indices"),
        (_bad_arrays(y_test=np.full(20, 0.5)), "y_test must hold class indices"),
        (_bad_arrays(x_train=np.zeros((0, 8, 8), np.uint8), y_train=np.zeros(0, int)), "x_train is empty"),
    ],
)
def test_bad_npz_arrays_are_zoo_errors(tmp_path, arrays, message):
    spec = _write_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ZooError) as error:
        load_dataset(spec)
    assert str(error.value).startswith(f"{spec}: ")
    assert message in str(error.value)


def test_unreadable_npz_files_are_zoo_errors(tmp_path):
    with pytest.raises(ZooError, match="no such file"):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    (tmp_path / "garbage.npz").write_bytes(b"this is not a zip archive")
    with pytest.raises(ZooError, match="garbage.npz: not a readable .npz archive"):
        load_dataset(f"npz:{tmp_path / 'garbage.npz'}")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(ZooError, match="holds a single array; expected an .npz archive"):
        load_dataset(f"npz:{tmp_path / 'single.npy'}")
    truncated = tmp_path / "truncated.npz"
    _write_npz(tmp_path / "whole.npz", **_keras_layout())
    truncated.write_bytes((tmp_path / "whole.npz").read_bytes()[:500])
    with pytest.raises(ZooError, match="truncated.npz: "):
        load_dataset(f"npz:{truncated}")


# --- folder ------------------------------------------------------------------------------------------------------


def _write_images(root, counts, *, mode="RGB", size=(10, 12), suffix=".png"):
    rng = np.random.default_rng(0)
    for name, count in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            Image.fromarray(pixels).convert(mode).save(root / name / f"{i}{suffix}")


def test_folder_of_classes_is_split_by_seed(tmp_path):
    _write_images(tmp_path, {"cat": 10, "dog": 10})
    (tmp_path / "notes.txt").write_text("not a class")
    data = load_dataset(f"folder:{tmp_path}", seed=0)
    assert data.class_names == ["cat", "dog"] and data.channels == 3 and data.default_image_size == 12
    assert (len(data.train), len(data.val), len(data.test)) == (14, 3, 3)
    assert data.train.from_files
    np.testing.assert_array_equal(load_dataset(f"folder:{tmp_path}", seed=0).test.x, data.test.x)
    x, y = _batches(make_pipeline(data.train, image_size=8, channels=3, batch_size=32, training=True, seed=0,
                                  epochs=1))[0]
    assert x.shape == (14, 8, 8, 3) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert sorted(y) == sorted(data.train.y)


def test_folder_with_train_and_test_and_gray_images(tmp_path):
    _write_images(tmp_path / "train", {"a": 10, "b": 10}, mode="L", suffix=".jpg")
    _write_images(tmp_path / "test", {"b": 3}, mode="L", suffix=".bmp")
    data = load_dataset(f"folder:{tmp_path}", seed=0)
    assert data.class_names == ["a", "b"] and data.channels == 1
    assert (len(data.train), len(data.val), len(data.test)) == (18, 2, 3)
    assert data.test.y.tolist() == [1, 1, 1]
    x, _ = _batches(make_pipeline(data.test, image_size=6, channels=1, batch_size=8, training=False, seed=0))[0]
    assert x.shape == (3, 6, 6, 1)


def test_bad_folders_are_zoo_errors(tmp_path):
    with pytest.raises(ZooError, match="no such directory"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "readme.txt").write_text("no images here")
    with pytest.raises(ZooError, match=r"no class folders with images \(.png, .jpg, .jpeg, .bmp, .gif\) in .*empty"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    _write_images(tmp_path / "broken", {"cat": 5, "dog": 5})
    (tmp_path / "broken" / "dog" / "fake.png").write_text("not a png")
    with pytest.raises(ZooError, match=r"fake.png is not a readable image"):
        load_dataset(f"folder:{tmp_path / 'broken'}")
    _write_images(tmp_path / "tiny", {"cat": 1, "dog": 1})
    with pytest.raises(ZooError, match="2 images are too few to split"):
        load_dataset(f"folder:{tmp_path / 'tiny'}")
    _write_images(tmp_path / "split" / "train", {"cat": 5})
    _write_images(tmp_path / "split" / "test", {"cow": 2})
    with pytest.raises(ZooError, match="has classes not in train/: cow"):
        load_dataset(f"folder:{tmp_path / 'split'}")


def test_domain_shifts_change_images_not_labels():
    from zoo.data import load_dataset

    clean = load_dataset("digits")
    x = clean.test.x.astype(np.float32) / 255.0
    for shift, check in [
        ("invert", lambda s: np.allclose(s, 1.0 - x)),
        ("brightness", lambda s: np.allclose(s, np.clip(x + 0.4, 0, 1))),
        ("contrast", lambda s: np.allclose(s, 0.5 + (x - 0.5) * 0.4)),
        ("noise", lambda s: 0.2 < float(np.std(s - x)) < 0.35 and s.min() >= 0 and s.max() <= 1),
    ]:
        shifted = load_dataset(f"digits+{shift}")
        assert shifted.name == f"digits+{shift}"
        np.testing.assert_array_equal(shifted.test.y, clean.test.y)
        assert shifted.test.x.dtype == np.float32 and check(shifted.test.x), shift


def test_class_subsets_relabel_and_keep_every_image_of_those_classes():
    from zoo.data import load_dataset

    clean = load_dataset("digits")
    upper = load_dataset("digits+classes=5-9")
    assert upper.name == "digits+classes=5-9" and upper.class_names == ["5", "6", "7", "8", "9"]
    for part in ("train", "val", "test"):
        original, kept = getattr(clean, part), getattr(upper, part)
        mask = original.y >= 5
        np.testing.assert_array_equal(kept.x, original.x[mask])
        np.testing.assert_array_equal(kept.y, original.y[mask] - 5)
    picked = load_dataset("digits+classes=0-1,7")
    assert picked.class_names == ["0", "1", "7"] and set(picked.test.y) == {0, 1, 2}


def test_per_class_limits_training_images_only_and_is_seeded():
    from zoo.data import load_dataset

    full = load_dataset("digits+classes=5-9")
    few = load_dataset("digits+classes=5-9+per-class=7")
    assert np.bincount(few.train.y).tolist() == [7] * 5
    assert len(few.val) == len(full.val) and len(few.test) == len(full.test)
    rows = {tuple(image.ravel()) for image in full.train.x}
    assert all(tuple(image.ravel()) in rows for image in few.train.x)  # a subset, labels kept with their images
    again, other = load_dataset("digits+classes=5-9+per-class=7"), load_dataset("digits+classes=5-9+per-class=7", seed=1)
    np.testing.assert_array_equal(again.train.x, few.train.x)
    assert not np.array_equal(other.train.x, few.train.x)
    assert len(load_dataset("digits+per-class=1000").train) == len(load_dataset("digits").train)


@pytest.mark.parametrize("spec, message", [
    ("digits+classes=5-12", "digits has classes 0-9"),
    ("digits+classes=a-b", "write class indices like 5-9"),
    ("digits+classes=4", "at least 2 classes"),
    ("digits+per-class=0", "number of training images per class"),
    ("digits+per-class", "unknown dataset modifier 'per-class'"),
    ("digits+blur", "unknown dataset modifier 'blur'"),
])
def test_bad_modifiers_are_zoo_errors(spec, message):
    from zoo.data import load_dataset

    with pytest.raises(ZooError, match=message):
        load_dataset(spec)
