"""The Dagster layer: assets, checks, resources, partitions, schedules and sensors over the core."""
