"""Training stage: a LoRA/QLoRA adapter per template and experiment, tracked in MLflow."""

import dagster as dg
import pydantic
from pydantic import Field

from echo_pipeline.defs.conditions import ADAPTER_AUTOMATION
from echo_pipeline.defs.configs import derived_config
from echo_pipeline.defs.io_manager import ParquetIOManager
from echo_pipeline.defs.partitions import adapter_partitions, dataset_for_adapter
from echo_pipeline.defs.pipes_client import TrainingPipesClient
from echo_pipeline.defs.provenance import (
    CODE_VERSIONS,
    adapter_provenance,
    data_version,
    provenance_metadata,
)
from echo_pipeline.defs.resources import BaseModelResource, MlflowResource, dagster_lineage_tags
from echo_pipeline.training.config import TrainingConfig

TRAINING = "training"
TRAINING_CODE_VERSION = CODE_VERSIONS["lora_adapter"]


class _TrainingLaunch(dg.Config):
    """How the training step is launched (not part of the recipe, nor of what it makes)."""

    out_of_process: bool = Field(
        default=True,
        description="Train in a subprocess through Dagster Pipes (keeps the Dagster process light; "
        "the same step runs under PipesK8sClient on a cluster). Off: train inside the step.",
    )
    processes: int = Field(
        default=1,
        ge=1,
        description="Training processes per node (data-parallel through torchrun: one per GPU; "
        "gloo on CPU). Each optimizer step is grad_accum rows per process.",
    )
    nnodes: int = Field(
        default=1, ge=1, description="Nodes training together (the cluster starts the others)."
    )
    rdzv_endpoint: str | None = Field(
        default=None,
        description="host:port where the nodes meet (torch c10d rendezvous); with nnodes > 1.",
    )

    @pydantic.model_validator(mode="after")
    def _torchrun_starts_the_processes(self) -> "_TrainingLaunch":
        if self.processes * self.nnodes > 1 and not self.out_of_process:
            raise ValueError(
                "processes/nnodes > 1 need out_of_process: torchrun starts the processes"
            )
        return self

    @property
    def world_size(self) -> int:
        """Training processes in all."""
        return self.processes * self.nnodes

    def overrides(self) -> dict:
        """The recipe fields set here (how the step is launched is not part of the recipe)."""
        launch = set(_TrainingLaunch.model_fields)
        found = {k: v for k, v in self.model_dump().items() if v is not None and k not in launch}
        if found.get("target_modules") == ["all-linear"]:  # peft's keyword, not a module name
            found["target_modules"] = "all-linear"
        return found


#: Every TrainingConfig field, as an override of the experiment's recipe (unset: the recipe's).
LoraConfig = derived_config(
    "LoraConfig",
    TrainingConfig,
    base=_TrainingLaunch,
    overrides=True,
    doc="Overrides of the experiment's recipe; unset fields keep the recipe's value. The "
    "recipes (partition dimension ``experiment``) live in echo_pipeline/training/experiments.py.",
)


@dg.asset(
    group_name=TRAINING,
    kinds={"pytorch", "mlflow"},
    partitions_def=adapter_partitions,
    deps=[dg.AssetDep("template_dataset", partition_mapping=dataset_for_adapter)],
    code_version=TRAINING_CODE_VERSION,
    pool="gpu",
    automation_condition=ADAPTER_AUTOMATION,
    description="A PEFT LoRA adapter (QLoRA on CUDA) trained on one template's dataset, with its MLflow run.",
)
def lora_adapter(
    context: dg.AssetExecutionContext,
    config: LoraConfig,
    base_model: BaseModelResource,
    mlflow_tracking: MlflowResource,
    pipes_client: TrainingPipesClient,
    io_manager: dg.ResourceParam[ParquetIOManager],
) -> dg.MaterializeResult:
    """Trains, measures held-out reply loss against the base model, and registers the adapter."""
    from echo_pipeline.infra.tracking import TrackingUnavailableError
    from echo_pipeline.training.adapters import adapter_job_for, run_adapter_job
    from echo_pipeline.training.experiments import experiment_config
    from echo_pipeline.training.job import outcome_metadata

    keys = context.partition_key.keys_by_dimension
    tags = dagster_lineage_tags(context, TRAINING_CODE_VERSION)
    if base_model.is_auto():  # measured on my replies: the scores go to MLflow with the run
        resolved, choice = base_model.choice()
        tags |= choice.tags()
    else:
        resolved = base_model.resolve()
    recipe = experiment_config(keys["experiment"], config.overrides())
    try:
        job = adapter_job_for(
            io_manager.layout(),
            keys["template"],
            keys["experiment"],
            resolved,
            recipe,
            tracking_uri=mlflow_tracking.uri(),
            experiment_name=mlflow_tracking.experiment_name,
            tags=tags,
        )
        mlflow_tracking.ensure_experiment()  # fail fast, before a child loads torch and the model
    except (OSError, ValueError, TrackingUnavailableError) as error:
        raise dg.Failure(description=str(error), allow_retries=False) from error

    if config.out_of_process:
        result = pipes_client.run_training(
            context=context,
            job=job,
            processes=config.processes,
            nnodes=config.nnodes,
            rdzv_endpoint=config.rdzv_endpoint,
        )
    else:

        def progress(step: int, metrics: dict[str, float]) -> None:
            context.log.info(
                f"step {step}: " + "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
            )

        outcome = run_adapter_job(job, on_progress=progress)
        result = dg.MaterializeResult(metadata=_as_dagster_metadata(outcome_metadata(outcome)))
    # The adapter's data version is its provenance: same dataset, base, recipe and code.
    provenance = adapter_provenance(
        context.instance, job.template, recipe, resolved.fingerprint, world_size=config.world_size
    )
    return dg.MaterializeResult(
        metadata={**(result.metadata or {}), **provenance_metadata(provenance)},
        data_version=data_version(provenance),
        check_results=result.check_results,
    )


def _as_dagster_metadata(raw: dict) -> dict:
    """Pipes-style metadata ({raw_value, type} dicts) as Dagster metadata values."""
    converted = {}
    for key, value in raw.items():
        if isinstance(value, dict) and value.get("type") == "path":
            converted[key] = dg.MetadataValue.path(value["raw_value"])
        elif isinstance(value, dict) and value.get("type") == "url":
            converted[key] = dg.MetadataValue.url(value["raw_value"])
        else:
            converted[key] = value
    return converted


training_assets = [lora_adapter]
