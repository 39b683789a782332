"""Runs spread over a Ray cluster: one shard actor per GPU, each running the single-host pipeline for
the sources placed on it (``--ray local|auto|ray://host:port``). Ray is an optional extra."""

from stream.cluster.driver import ClusterReport, require_ray, run_cluster

__all__ = ["ClusterReport", "require_ray", "run_cluster"]
