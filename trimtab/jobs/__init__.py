"""Fine-tuning jobs: queued, tracked and resumable runs.

Not built yet: this package marks its place in the pipeline."""
