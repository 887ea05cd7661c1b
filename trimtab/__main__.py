"""``python -m trimtab`` runs the CLI."""

from trimtab.cli import main

raise SystemExit(main())
