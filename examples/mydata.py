"""A data loader of your own: scikit-learn's digits as 1x8x8 images, split by the study's seed."""

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split


def load(seed):
    x, y = load_digits(return_X_y=True)
    x = x.reshape(-1, 1, 8, 8) / 16.0
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, random_state=seed, stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.25, random_state=seed, stratify=y_rest)
    return {"train": (x_train, y_train), "val": (x_val, y_val), "test": (x_test, y_test), "task": "classification"}
