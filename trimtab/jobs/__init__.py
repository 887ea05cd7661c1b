"""Fine-tuning jobs: OpenAI's files and fine-tuning jobs API, self-hosted.

- :mod:`.store`: the source of truth (SQLite by default, PostgreSQL for a shared deployment);
- :mod:`.service`: the operations the HTTP routes and the command line call;
- :mod:`.scheduler`: validates, starts, follows, pauses, cancels and recovers jobs;
- :mod:`.sweeps`: sweep jobs (``trimtab sweep``) whose trials are jobs of their own;
- :mod:`.executors` (a process group here) and :mod:`.cluster` (a Ray cluster): where a job's
  ``trimtab train`` runs;
- :mod:`.client`: the command line's client of a remote server.
"""
