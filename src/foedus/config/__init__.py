"""Job files: YAML that describes a federated job, validated into a :class:`JobSpec`."""

from foedus.config.spec import JobSpec, load_job

__all__ = ["JobSpec", "load_job"]
