"""A TFDS dataset of flow-refinement samples, stored as array_record, read without TensorFlow.

Packs either the built-in synthetic scenes (with the baseline estimator's flow and confidences)
or local HD3-layout files (list files, see :func:`ppac_jax.data.datasets.list_flow_dataset`)
into ``array_record`` shards, read back with ``tfds.data_source`` (random access) and a grain
loader that shards records per JAX process. Needs the optional ``tfds`` extra
(``tensorflow-datasets``, ``array-record``, ``grain``); TensorFlow itself is not needed.

    builder = PpacFlow(data_dir=d, config="synthetic_small")
    builder.download_and_prepare(file_format="array_record")
    source = tfds.data_source("ppac_flow/synthetic_small", data_dir=d, split="train")
    loader = grain_loader(source, batch_size=8, seed=0)
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from ppac_jax.data import datasets

__all__ = ["PpacFlow", "PpacFlowConfig", "grain_loader"]


@dataclasses.dataclass
class PpacFlowConfig(tfds.core.BuilderConfig):
    """``source``: "synthetic" (scenes ``height`` x ``width``, ``num_train``/``num_validation``
    scenes) or "lists" (``train_list``/``validation_list``/``estimates_root`` on disk)."""

    source: str = "synthetic"
    height: int = 96
    width: int = 128
    num_train: int = 384
    num_validation: int = 32
    levels: int = 5
    train_list: str | None = None
    validation_list: str | None = None
    estimates_root: str | None = None
    missing_confidence: str = "error"


class PpacFlow(tfds.core.GeneratorBasedBuilder):
    """Flow refinement samples: images, ground truth, input estimate, per-level confidences."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        PpacFlowConfig(name="synthetic", description="96x128 synthetic scenes"),
        PpacFlowConfig(name="synthetic_small", description="32x48 synthetic scenes (tests)",
                       height=32, width=48, num_train=8, num_validation=2),
    ]

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        hw = (c.height, c.width) if c.source == "synthetic" else (None, None)

        def t(shape, dtype):  # zlib: compact, and allows images of varying size
            return tfds.features.Tensor(shape=shape, dtype=dtype, encoding="zlib")

        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image1": t(shape=hw + (3,), dtype=np.uint8),
                "image2": t(shape=hw + (3,), dtype=np.uint8),
                "flow": t(shape=hw + (2,), dtype=np.float32),
                "valid": t(shape=hw, dtype=np.bool_),
                "estimate": t(shape=hw + (2,), dtype=np.float32),
                "confidence": t(shape=hw + (c.levels,), dtype=np.float32),
            }),
            homepage="https://github.com/",
        )

    def _split_generators(self, dl_manager):
        if self.builder_config.source not in ("synthetic", "lists"):
            raise ValueError(f"source must be 'synthetic' or 'lists', got "
                             f"{self.builder_config.source!r}")
        return {"train": self._generate_examples("train"),
                "validation": self._generate_examples("validation")}

    def _generate_examples(self, split):
        c = self.builder_config
        if c.source == "synthetic":
            # validation seeds are disjoint from training seeds (held-out scenes)
            start, count = (0, c.num_train) if split == "train" else (900_000, c.num_validation)
            return self._generate_synthetic(start, count)
        return self._generate_list(c.train_list if split == "train" else c.validation_list)

    @staticmethod
    def _record(sample):
        return {"image1": np.round(np.asarray(sample["image1"]) * 255).astype(np.uint8),
                "image2": np.round(np.asarray(sample["image2"]) * 255).astype(np.uint8),
                "flow": np.asarray(sample["flow"], np.float32),
                "valid": np.asarray(sample["valid"], bool),
                "estimate": np.asarray(sample["estimate"], np.float32),
                "confidence": np.asarray(sample["confidence"], np.float32)}

    def _generate_synthetic(self, start, count):
        c = self.builder_config
        data = datasets.synthetic_flow_dataset(range(start, start + count), height=c.height,
                                               width=c.width)
        for i in range(count):
            yield start + i, self._record({k: v[i] for k, v in data.items()})

    def _generate_list(self, list_file):
        c = self.builder_config
        if not list_file or not c.estimates_root:
            raise ValueError("source='lists' needs train_list, validation_list and estimates_root")
        for s in datasets.list_flow_dataset(list_file, estimates_root=c.estimates_root,
                                            missing_confidence=c.missing_confidence,
                                            levels=c.levels):
            yield s["name"], self._record(s)


def grain_loader(source, *, batch_size: int, seed: int = 0, shuffle: bool = True,
                 num_epochs: int | None = None, worker_count: int = 0):
    """A grain DataLoader over a random-access ``source``, each JAX process reading its shard.

    Records are decoded to float images in [0, 1] (keys as in ppac_jax.data.datasets) and
    batched with ``batch_size`` *per process*.
    """
    import grain.python as grain

    class _Decode(grain.MapTransform):
        def map(self, record):
            out = dict(record)
            for k in ("image1", "image2"):
                out[k] = np.asarray(record[k], np.float32) / 255.0
            return out

    sampler = grain.IndexSampler(num_records=len(source), shuffle=shuffle, seed=seed,
                                 num_epochs=num_epochs,
                                 shard_options=grain.ShardByJaxProcess(drop_remainder=True))
    return grain.DataLoader(data_source=source, sampler=sampler,
                            operations=[_Decode(), grain.Batch(batch_size, drop_remainder=True)],
                            worker_count=worker_count)
