"""Developer tools beside the runtime package: run from the repository root, never shipped.

``python -m tools.sample_export`` regenerates the bundled sample export (data/sample).
"""
