"""The evaluation judges the split training held out (test where it has pairs, else val), and
takes the reply losses training already measured there."""

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


def _heldout(results: dict, digest: str = "d1", split: str = "test"):
    from echo_pipeline.evaluation.evaluate import HeldOut
    from echo_pipeline.infra.records import AdapterMetadata, BaseModelRecord, DatasetRecord

    meta = AdapterMetadata(
        "chatml", BaseModelRecord("smollm2"), dataset=DatasetRecord(digest=digest), results=results
    )
    empty = pd.DataFrame()
    return HeldOut(meta, frame("train", split), empty, split, empty, empty)


def test_the_reply_losses_training_measured_on_this_split_of_this_dataset_are_reused():
    from echo_pipeline.evaluation.evaluate import recorded_reply_losses

    measured = {"base_test_reply_loss": 4.14, "adapter_test_reply_loss": 3.57}
    assert recorded_reply_losses(_heldout(measured), "d1") == {"base": 4.14, "adapter": 3.57}
    # another dataset, another split, a side missing or not a number: scored again
    assert recorded_reply_losses(_heldout(measured), "d2") is None
    assert recorded_reply_losses(_heldout(measured, split="val"), "d1") is None
    assert recorded_reply_losses(_heldout({"adapter_test_reply_loss": 3.57}), "d1") is None
    nan = measured | {"base_test_reply_loss": float("nan")}
    assert recorded_reply_losses(_heldout(nan), "d1") is None
