"""Runs on a remote cluster: Ray Jobs submission and KubeRay manifests, from one job spec."""
