"""An OpenAI-compatible HTTP server over trimtab's generation engine (``trimtab serve``).

One module per resource: ``completions`` (``/v1/completions``), ``chat``
(``/v1/chat/completions``), ``models`` (``/v1/models``); ``app`` builds the FastAPI app and
runs it (``serve``); ``schemas`` holds OpenAI's request and response bodies, ``errors`` its
error JSON, ``sse`` the event streams, ``running`` the engine streams of one request.

Nothing is imported here: ``trimtab`` commands other than ``serve`` never load FastAPI.
"""
