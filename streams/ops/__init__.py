"""Operator plumbing: metrics, /healthz and /readyz, logs, consumer lag."""
