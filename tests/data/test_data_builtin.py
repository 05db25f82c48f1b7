import numpy as np

from mimreg.data import load_dataset
from mimreg.data.synthetic import generate


def test_digits_sizes_split_and_images():
    train, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    assert len(train) + len(test) == 1797
    assert (len(train), len(test)) == (1437, 360)
    assert train.num_classes == test.num_classes == 10 and train.classes[3] == "3"
    image, label = test[0]
    assert image.mode == "RGB" and image.size == (32, 32) and 0 <= label < 10
    pixels = np.asarray(image)
    assert np.array_equal(pixels[..., 0], pixels[..., 2])  # grey replicated to RGB
    assert pixels.max() > 200  # 0..16 scaled to 0..255
    # Stratified: every class has about 20% of its images in test.
    per_class_test = np.bincount(test.labels, minlength=10)
    per_class_all = per_class_test + np.bincount(train.labels, minlength=10)
    assert np.all(np.abs(per_class_test / per_class_all - 0.2) < 0.02)


def test_digits_split_is_fixed_and_pretrain_is_train():
    a, b = load_dataset("digits", "pretrain"), load_dataset("digits", "train")
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(np.asarray(a[10][0]), np.asarray(b[10][0]))


def test_synthetic_is_deterministic_and_balanced():
    train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")
    assert (len(train), len(test)) == (512, 256)
    assert train.num_classes == 10
    assert np.all(np.bincount(train.labels) >= 51)
    image, _ = train[0]
    assert image.mode == "RGB" and image.size == (32, 32)
    images, labels = generate(512, seed=1234)
    np.testing.assert_array_equal(labels, train.labels)
    np.testing.assert_array_equal(images[7], np.asarray(train[7][0]))
    assert not np.array_equal(np.asarray(train[0][0]), np.asarray(test[0][0]))


def test_synthetic_classes_are_learnable():
    train, test = load_dataset("synthetic", "train"), load_dataset("synthetic", "test")

    def features(dataset):
        return np.stack([np.asarray(dataset[i][0], np.float32).ravel() for i in range(len(dataset))]) / 255

    x_train, x_test = features(train), features(test)
    centroids = np.stack([x_train[train.labels == k].mean(0) for k in range(10)])
    predicted = ((x_test[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
    assert (predicted == test.labels).mean() > 0.9
