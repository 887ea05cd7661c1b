"""trimtab: self-hosted fine-tuning of open language models.

The package follows the pipeline: ``data`` (read, check, split, write fine-tuning files) →
``models`` (base models) → ``methods`` (what trains) → ``training`` → ``evaluation`` →
``generation`` → ``jobs`` → ``server``. The CLI in ``trimtab.cli`` only parses, calls and prints.
"""

__version__ = "0.1.0"
