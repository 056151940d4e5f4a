"""The chat page: talk to an adapter, compare two, play "which one is me?", rate replies.

Started by ``echo-pipeline chat --web`` and beside the Dagster and MLflow UIs by
``echo-pipeline ui``. Nothing here is imported by the Dagster code location.
"""
