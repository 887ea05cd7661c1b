"""An OpenAI-compatible HTTP server for fine-tuned models.

Not built yet: this package marks its place in the pipeline."""
