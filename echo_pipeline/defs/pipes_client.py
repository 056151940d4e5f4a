"""The Pipes client that runs training: a local subprocess, or a pod on Kubernetes.

Chosen by config (the launchpad's ``resources: pipes_client: config: backend: k8s``) or, for a
whole deployment, by env (``ECHO_PIPES=k8s`` and ``ECHO_K8S_*``, read by ``build_resources``).
``dagster-k8s`` is an optional extra, imported only when a k8s run starts: the code location
loads without it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, Literal

import dagster as dg
from pydantic import Field

from echo_pipeline.defs.configs import core_values, derived_config
from echo_pipeline.training.pod_spec import PodSettings

PIPES_ENV = "ECHO_PIPES"
K8S_EXTRA = "pip install 'echo_pipeline[k8s]'"
#: Env vars that preset the k8s fields (the launchpad can still override each).
K8S_ENV_FIELDS = {
    "ECHO_K8S_IMAGE": "image",
    "ECHO_K8S_NAMESPACE": "namespace",
    "ECHO_K8S_GPUS": "gpus",
    "ECHO_K8S_DATA_CLAIM": "data_volume_claim",
    "ECHO_K8S_DATA_MOUNT": "data_mount_path",
    "ECHO_K8S_SERVICE_ACCOUNT": "service_account",
}
Backend = Literal["subprocess", "k8s"]
BACKENDS: tuple[str, ...] = ("subprocess", "k8s")


class _PipesBackend(dg.ConfigurableResource):
    """Starts the training child through Dagster Pipes and returns what it reported.

    ``subprocess`` runs the command on this machine (``PipesSubprocessClient``). ``k8s`` runs it
    in one pod (``PipesK8sClient``) built by :func:`echo_pipeline.training.pod_spec.training_pod_spec`
    from the :class:`~echo_pipeline.training.pod_spec.PodSettings` fields (derived below): the
    data volume mounted where this process sees ``ECHO_DATA_DIR``, one GPU per process.
    """

    backend: Backend = Field(
        default="subprocess",
        description="'subprocess' (this machine) or 'k8s' (a pod; needs the k8s extra). "
        f"Env {PIPES_ENV} sets the default.",
    )
    namespace: str = Field(
        default="", description="k8s: namespace (empty: the current one, else 'default')."
    )
    kubeconfig_file: str = Field(
        default="", description="k8s: kubeconfig (empty: in-cluster config, else ~/.kube/config)."
    )
    kube_context: str = Field(default="", description="k8s: kubeconfig context.")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> _PipesBackend:
        """The client ``ECHO_PIPES`` and ``ECHO_K8S_*`` ask for; subprocess when unset."""
        environ = os.environ if environ is None else environ
        backend = environ.get(PIPES_ENV, "").strip() or "subprocess"
        if backend not in BACKENDS:
            raise ValueError(f"{PIPES_ENV}={backend!r}: expected one of {', '.join(BACKENDS)}")
        fields: dict[str, Any] = {"backend": backend}
        for name, field_name in K8S_ENV_FIELDS.items():
            value = environ.get(name, "").strip()
            if not value:
                continue
            if field_name == "gpus":
                if not value.isdigit():
                    raise ValueError(f"{name}={value!r}: expected a GPU count (0 for a CPU pod)")
                fields[field_name] = int(value)
            else:
                fields[field_name] = value
        return cls(**fields)

    def run(
        self,
        *,
        context: dg.AssetExecutionContext,
        command: list[str],
        extras: dict[str, Any],
    ) -> dg.PipesClientCompletedInvocation:
        """Run ``command`` (``python -m ...`` or its torchrun form) with ``extras['job']``, an
        ``AdapterJob.to_dict()``, as the Pipes extras."""
        if self.backend == "subprocess":
            return dg.PipesSubprocessClient().run(command=command, context=context, extras=extras)
        return self._run_in_pod(context=context, command=command, extras=extras)

    def run_training(
        self,
        *,
        context: dg.AssetExecutionContext,
        job: Any,
        processes: int = 1,
        nnodes: int = 1,
        rdzv_endpoint: str | None = None,
    ) -> dg.MaterializeResult:
        """Train ``job`` (an :class:`~echo_pipeline.training.adapters.AdapterJob`) in a child
        and return its materialisation. A child that fails writes its error to a file in the
        work dir, and the step fails with that line (Pipes itself only says "exit code 1")."""
        from echo_pipeline.training.distributed import launch_command
        from echo_pipeline.training.job import failure_file

        failure = failure_file(job.work_dir)
        failure.unlink(missing_ok=True)
        try:
            return self.run(
                command=launch_command(processes, nnodes, rdzv_endpoint=rdzv_endpoint),
                context=context,
                extras={"job": job.to_dict()},
            ).get_materialize_result()
        except Exception as error:  # Pipes' error class is not public API
            if not failure.exists():
                raise  # killed, or failed before the job started: Pipes' own message
            reason = failure.read_text(encoding="utf-8").strip()
            raise dg.Failure(
                description=f"training subprocess failed: {reason}",
                metadata={"work_dir": dg.MetadataValue.path(str(job.work_dir))},
            ) from error

    def _run_in_pod(
        self, *, context: dg.AssetExecutionContext, command: list[str], extras: dict[str, Any]
    ) -> dg.PipesClientCompletedInvocation:
        from echo_pipeline.infra.paths import data_dir
        from echo_pipeline.training.pod_spec import (
            POD_LABELS,
            PodSpecError,
            training_pod_spec,
            unreachable_from_pod,
        )

        job = extras["job"]
        try:
            settings = PodSettings(**core_values(self, PodSettings))
            problems = unreachable_from_pod(job, str(data_dir()), settings.data_mount_path)
            if problems:
                raise PodSpecError("; ".join(problems))
            spec = training_pod_spec(
                settings, command, tracking_uri=job["tracking_uri"], data_dir=str(data_dir())
            )
        except PodSpecError as error:
            raise dg.Failure(description=f"k8s training: {error}", allow_retries=False) from error
        try:  # after the settings: their mistakes show even where the extra is missing
            from dagster_k8s import PipesK8sClient
        except ImportError as error:
            raise dg.Failure(
                description=f"backend 'k8s' needs dagster-k8s, which is not installed: {K8S_EXTRA}",
                allow_retries=False,
            ) from error
        client = PipesK8sClient(
            kubeconfig_file=self.kubeconfig_file or None, kube_context=self.kube_context or None
        )
        return client.run(
            context=context,
            extras=extras,
            namespace=self.namespace or None,
            base_pod_meta={"labels": dict(POD_LABELS)},
            base_pod_spec=spec,
        )


#: The Pipes client resource: the backend's fields and every PodSettings field.
TrainingPipesClient = derived_config(
    "TrainingPipesClient", PodSettings, base=_PipesBackend, doc=_PipesBackend.__doc__ or ""
)
