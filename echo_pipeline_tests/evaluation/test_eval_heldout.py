"""The evaluation judges the split training held out: test where it has pairs, else val."""

from __future__ import annotations

import pandas as pd
import pytest

from echo_pipeline.evaluation.evaluate import heldout_split_name


def frame(*splits: str) -> pd.DataFrame:
    return pd.DataFrame({"split": list(splits)})


def test_test_is_evaluated_where_it_has_pairs_else_val():
    assert heldout_split_name(frame("train", "val", "test")) == "test"
    assert heldout_split_name(frame("train", "val", "val")) == "val"


def test_a_dataset_with_nothing_held_out_cannot_be_evaluated():
    with pytest.raises(ValueError, match="no 'test' or 'val' rows"):
        heldout_split_name(frame("train", "train"))
