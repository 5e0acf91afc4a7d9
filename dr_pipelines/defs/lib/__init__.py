"""Shared machinery of the Dagster layer: the settings resource, default schedule/sensor status."""
