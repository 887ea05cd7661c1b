"""Metrics, label scoring and reports; see issue 4.

Not built yet: this package marks its place in the pipeline."""
