"""Records between stages: the dataset manifest, the adapter metadata, and who "me" is."""

from __future__ import annotations

import json

import pytest

from echo_pipeline.infra.records import (
    METADATA_FILE,
    AdapterMetadata,
    BaseModelRecord,
    DatasetManifest,
    DatasetRecord,
    RecordError,
    TrackingRecord,
)

MANIFEST = DatasetManifest(
    template="chatml",
    system_prompt="You are alex. Reply the way alex would in a casual chat.",
    eos_id=2,
    me_ids=("291274804919574979",),
    me_names=("alex", "alex_alt"),
    max_tokens=512,
    base_model="smollm2-135m-instruct",
    base_model_fingerprint="gguf:abc",
)
METADATA = AdapterMetadata(
    template="chatml",
    base_model=BaseModelRecord("smollm2", "/models/smollm2", "gguf:abc", None),
    experiment="demo",
    system_prompt=MANIFEST.system_prompt,
    me_names=MANIFEST.me_names,
    dataset=DatasetRecord("/data/template_dataset/chatml.parquet", "d1g3st", {"train": 3}),
    training={"lora_r": 16, "resolved_dtype": "float32"},
    fingerprint="f00",
    results={"adapter_test_reply_loss": 2.5},
    package_version="0.1.0",
    git_commit="c0ffee",
    mlflow=TrackingRecord("sqlite:///x.db", "1", "run1"),
)


def test_the_dataset_manifest_reads_back_what_was_written(tmp_path):
    path = MANIFEST.write(tmp_path / "template_dataset" / "chatml.manifest.json")
    assert DatasetManifest.load(path) == MANIFEST
    assert MANIFEST.me_name == "alex"
    assert json.loads(path.read_text())["me_names"] == ["alex", "alex_alt"]


def test_the_manifest_carries_the_reply_memory_and_older_ones_have_none(tmp_path):
    import dataclasses

    with_memory = dataclasses.replace(
        MANIFEST,
        memory_k=3,
        memory_index="/data/reply_memory.parquet",
        memory_digest="abc",
        dataset_digest="d1g3st",
    )
    path = with_memory.write(tmp_path / "chatml.manifest.json")
    assert DatasetManifest.load(path) == with_memory
    assert json.loads(path.read_text())["memory_k"] == 3
    older = {
        k: v for k, v in with_memory.to_dict().items() if not k.startswith(("memory", "dataset"))
    }
    path.write_text(json.dumps(older))
    assert DatasetManifest.load(path).memory_k == 0


def test_a_missing_or_partial_manifest_names_the_file_and_the_fix(tmp_path):
    path = tmp_path / "chatml.manifest.json"
    with pytest.raises(FileNotFoundError, match="re-materialise template_dataset"):
        DatasetManifest.load(path)
    path.write_text(json.dumps({"template": "chatml"}))
    with pytest.raises(RecordError, match=f"{path}: .*system_prompt.*re-materialise"):
        DatasetManifest.load(path)
    path.write_text("{not json")
    with pytest.raises(RecordError, match="not valid JSON"):
        DatasetManifest.load(path)


def test_adapter_metadata_reads_back_what_was_written(tmp_path):
    METADATA.write(tmp_path)
    assert AdapterMetadata.load(tmp_path) == METADATA
    raw = json.loads((tmp_path / METADATA_FILE).read_text())
    # The file's shape, which lineage readers (MLflow artifact, tests, users) rely on.
    assert raw["template"] == "chatml" and raw["dataset"]["digest"] == "d1g3st"
    assert raw["mlflow"]["run_id"] == "run1" and raw["base_model"]["fingerprint"] == "gguf:abc"


def test_adapter_metadata_without_one_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="not an echo_pipeline adapter"):
        AdapterMetadata.load(tmp_path)
    (tmp_path / METADATA_FILE).write_text(json.dumps({"template": "chatml"}))
    with pytest.raises(RecordError, match="base_model"):
        AdapterMetadata.load(tmp_path)


def test_a_minimal_hand_written_metadata_file_gets_the_defaults(tmp_path):
    (tmp_path / METADATA_FILE).write_text(
        json.dumps({"template": "chatml", "system_prompt": "", "base_model": {"source": "b"}})
    )
    meta = AdapterMetadata.load(tmp_path)
    assert meta.template == "chatml" and meta.base_model == BaseModelRecord("b")
    assert meta.experiment == "" and meta.me_name == "" and meta.mlflow == TrackingRecord()


# --- me flows by value ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sample_messages():
    from echo_pipeline.exports import read_exports
    from echo_pipeline.infra.paths import sample_export_dir

    return read_exports([sample_export_dir()]).to_pandas()


@pytest.mark.parametrize("context_turns", [3, 0])
def test_the_pairs_carry_my_name_even_without_context(sample_messages, context_turns):
    """With context_turns=0 no context turn names me: the name still comes from the export."""
    from echo_pipeline.datasets.templates import default_system_prompt
    from echo_pipeline.pairs.conversations import PairingConfig, build_pairs, pairs_identity

    pairs, report = build_pairs(
        sample_messages, PairingConfig(me=("alex",), context_turns=context_turns)
    )
    me = pairs_identity(pairs)
    assert me.names == ("alex",) and me.ids == tuple(report.me_ids) and report.me_names == ["alex"]
    assert default_system_prompt(me.names[0]).startswith("You are alex.")


def test_pairs_from_before_names_were_stored_fall_back_to_the_context(sample_messages):
    from echo_pipeline.pairs.conversations import PairingConfig, build_pairs, pairs_identity

    pairs, _ = build_pairs(sample_messages, PairingConfig(me=("alex",)))
    assert pairs_identity(pairs.replace_schema_metadata({})).names == ("alex",)
    bare, _ = build_pairs(sample_messages, PairingConfig(me=("alex",), context_turns=0))
    assert pairs_identity(bare.replace_schema_metadata({})).names == ()


def test_a_job_crosses_to_another_process_as_json_and_comes_back_equal(tmp_path):
    """AdapterJob and PreferenceJob go to the training child as JSON (Pipes extras): paths as
    strings, nested configs as dicts, and back to the same dataclass on the other side."""
    from echo_pipeline.preference.dpo import PreferenceConfig
    from echo_pipeline.preference.job import PreferenceJob
    from echo_pipeline.training.adapters import AdapterJob
    from echo_pipeline.training.base_model import ResolvedBaseModel
    from echo_pipeline.training.config import TrainingConfig

    adapter_job = AdapterJob(
        template="chatml",
        experiment="demo",
        dataset_path=tmp_path / "dataset.parquet",
        adapter_dir=tmp_path / "adapter",
        work_dir=tmp_path / "work",
        base_model=ResolvedBaseModel(
            source="smollm2-135m-instruct", path=str(tmp_path / "base"), fingerprint="gguf:abc"
        ),
        training=TrainingConfig(max_steps=3),
        prompt={"system_prompt": "You are alex.", "me_names": ["alex"]},
        tags={"dagster.run_id": "r1"},
    )
    preference_job = PreferenceJob(
        template="chatml",
        experiment="demo",
        dataset_path=tmp_path / "dataset.parquet",
        pairs_path=tmp_path / "pairs.parquet",
        sft_adapter_dir=tmp_path / "adapter",
        preference_pairs_path=tmp_path / "preference_pairs.parquet",
        adapter_dir=tmp_path / "dpo",
        work_dir=tmp_path / "dpo_work",
        preference=PreferenceConfig(),
        human_pairs_paths=[str(tmp_path / "ratings.jsonl")],
    )
    for job in (adapter_job, preference_job):
        sent = json.loads(json.dumps(job.to_dict()))  # what the child reads
        assert sent["adapter_dir"] == str(job.adapter_dir)
        back = type(job).from_dict(sent)
        assert back == job and isinstance(back.work_dir, type(job.work_dir))
