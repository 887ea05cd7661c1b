"""Sampling with OpenAI's parameter names and ranges, shared by the CLI and the server.

Not built yet: this package marks its place in the pipeline."""
