"""A class-conditional data set written before the precompute failed rows without a label holds nulls, read as
label -1, which the class embedding fails on mid-training; both loaders name such rows before training."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ditcore.config import ConfigError
from tests.jobs._train_helpers import make_latent_dataset, train_config


def test_both_loaders_refuse_rows_without_a_label(tmp_path):
    from jobs.train.data import driver_rows, train_dataset
    from jobs.train.plan import resolve_run

    manifest = make_latent_dataset(tmp_path / "data", n=16, num_classes=4)
    part = sorted((Path(manifest) / "data").glob("*.parquet"))[0]
    table = pq.read_table(part)
    labels = table.column("label").to_pylist()
    labels[1] = None
    pq.write_table(table.set_column(table.schema.get_field_index("label"), "label", pa.array(labels, pa.int32())), part)
    plan = resolve_run(train_config(manifest, tmp_path, preset="DiT-T/2", tracking=False), check_mlflow=False)
    for load in (driver_rows, train_dataset):  # data.loader driver / ray
        with pytest.raises(ConfigError, match=r"1 of 16 training rows have no class label"):
            load(plan, None)
