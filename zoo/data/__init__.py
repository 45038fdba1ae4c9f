"""Datasets (`load_dataset(spec)`) and their tf.data pipelines (`make_pipeline(split, ...)`)."""

from zoo.data.dataset import ImageDataset, Split
from zoo.data.pipeline import make_pipeline, steps_per_epoch
from zoo.data.sources import DATASET_SPECS, load_dataset

__all__ = ["DATASET_SPECS", "ImageDataset", "Split", "load_dataset", "make_pipeline", "steps_per_epoch"]
