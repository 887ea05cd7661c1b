"""The one training loop that serves every method and task; see issue 3.

Not built yet: this package marks its place in the pipeline."""
