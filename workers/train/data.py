"""The dataset side of training: the manifest's shards as Ray Data datasets, and the collation
of packed rows (tokens, document ids, loss mask, media) into model-ready batches."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from infra.storage import join, resolve
from model.encoders import Media
from workers.data.manifest import dataset_root
from workers.data.pack import ASSISTANT_ID, PackedSequences, loss_mask_for
from workers.data.records import MEDIA_DTYPES

# The manifest names every file, so Ray Data's V2 parquet datasource (its default; an actor pool
# reads each file's footer to plan the read) buys nothing here and costs every Ray Train fit a
# few seconds of start-up (docs/benchmarks.md, "Fit start-up")
PARQUET_DATASOURCE_V2 = False


@dataclass
class Batch:
    rows: PackedSequences  # (B, L + 1) each
    media: Media  # in the order their placeholders appear in the flattened batch

    @property
    def tokens(self) -> int:
        return self.rows.tokens[:, 1:].numel()


def split_dataset(manifest: dict, split: str, sft: bool = False, shuffle_seed: int | None = None):
    """A Ray Data dataset of one split's rows: in shard order, or with `shuffle_seed` in one seeded
    permutation of all of them (the same at every execution, so a resumed run reads what the
    interrupted one would have); for sft, only rows with an assistant turn (the others would
    contribute no loss).

    The shards hold the corpus in its build order, a source or a synthetic task after another:
    read in that order, training would see one kind of document for thousands of steps at a
    time (text first, copy documents last), not the mix the spec sets."""
    import ray
    from ray.data import RandomSeedConfig

    root = dataset_root(manifest)
    shards = [join(root, s["path"]) for s in manifest["splits"][split]["shards"]]
    if not shards:
        raise ValueError(f"the dataset's {split} split is empty")
    fs, _ = resolve(shards[0])
    ctx = ray.data.DataContext.get_current()  # read when a dataset is made, as it is here
    ctx.execution_options.preserve_order = True  # every execution the same rows: exact resumes
    ctx.use_datasource_v2 = PARQUET_DATASOURCE_V2
    ctx.enable_progress_bars = False  # V1's sampling bar, in the middle of the CLI's own progress
    ds = ray.data.read_parquet([resolve(s)[1] for s in shards], filesystem=fs)
    if sft:
        ds = ds.filter(lambda row: ASSISTANT_ID in row["tokens"])
    if shuffle_seed is not None:
        ds = ds.random_shuffle(seed=RandomSeedConfig(seed=shuffle_seed, reseed_after_execution=False))
    return ds


def collate(columns: dict[str, np.ndarray], sft: bool = False) -> Batch:
    """Packed Parquet rows (as Ray Data's numpy batch) -> a Batch on CPU."""
    tokens = np.stack(columns["tokens"]).astype(np.int64)  # (B, L + 1)
    doc_ids = np.stack(columns["doc_ids"]).astype(np.int64)
    loss_mask = np.stack(columns["loss_mask"]).astype(bool)
    if sft:  # only the assistant's turns teach; pretraining text in the row does not
        loss_mask &= np.stack([loss_mask_for(row, chat=True) for row in tokens]).astype(bool)
    media = Media()
    for kinds, shapes, blobs in zip(columns["media_kinds"], columns["media_shapes"],
                                    columns["media_bytes"]):
        for kind, shape, blob in zip(kinds, shapes, blobs):
            array = np.frombuffer(blob, dtype=MEDIA_DTYPES[kind]).reshape([int(d) for d in shape])
            media.of(kind).append(torch.from_numpy(array.astype(np.float32) if kind == "audio"
                                                   else array.copy()))
    rows = PackedSequences(torch.from_numpy(tokens), torch.from_numpy(doc_ids),
                           torch.from_numpy(loss_mask))
    return Batch(rows, media)
