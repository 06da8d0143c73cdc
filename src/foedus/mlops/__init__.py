"""MLOps integrations: experiment tracking (MLflow), artifact storage (S3/MinIO), monitoring
(Prometheus, Grafana) and data drift (Evidently), each behind its own extra.

Every integration is an ordinary pod fed by the server's optional ``events`` wire (one
``Kind.METRICS`` message per round) or, for code that only has a :class:`ServerPod` or
:func:`foedus.run_job`, a plain round listener. Importing this package imports
no third-party library; each module imports its library when an object is built.
"""
