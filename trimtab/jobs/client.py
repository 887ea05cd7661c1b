"""A client of a trimtab server's files and fine-tuning jobs API, for ``trimtab jobs --server``.

:class:`HttpJobs` has the method names and return values of
:class:`~trimtab.jobs.service.JobsService`, so the command line prints the same objects
whether it works on the local store or on a server. A refusal is the server's
:class:`~trimtab.jobs.objects.ApiProblem` again, with its status, message, param and code.

Why the standard library and not the ``openai`` package: that is a test-only dependency, and
this needs a dozen requests and one streamed upload.
"""

from __future__ import annotations

import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode

from trimtab.errors import TrimtabError
from trimtab.jobs.objects import ApiProblem

CHUNK_BYTES = 1 << 20


class HttpJobs:
    """Files and fine-tuning jobs on the server at ``base_url`` (``http://host:8000``, with or
    without ``/v1``)."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 60):
        self.base_url = base_url.rstrip("/").removesuffix("/v1")
        self.api_key, self.timeout = api_key, timeout

    # --- files -------------------------------------------------------------------------------

    def upload(self, filename: str, source: BinaryIO, purpose: str) -> dict[str, Any]:
        """Upload ``source`` as ``filename``; the file is streamed, never read whole."""
        boundary = f"trimtab-{secrets.token_hex(16)}"
        head, tail = _form_parts(boundary, os.path.basename(filename), purpose)
        size = _remaining(source)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        if size is not None:  # else urllib sends it chunked
            headers["Content-Length"] = str(len(head) + size + len(tail))
        body = _stream(head, source, tail)
        return self._call("POST", "/files", body=body, headers=headers)

    def list_files(
        self,
        *,
        purpose: str | None = None,
        limit: int = 10000,
        order: str = "desc",
        after: str | None = None,
    ) -> dict[str, Any]:
        query = {"purpose": purpose, "limit": limit, "order": order, "after": after}
        return self._call("GET", "/files", query=query)

    def get_file(self, file_id: str) -> dict[str, Any]:
        return self._call("GET", f"/files/{_segment(file_id)}")

    def write_content(self, file_id: str, out: BinaryIO) -> int:
        """Copy a file's content to ``out`` in chunks; returns the bytes written."""
        written = 0
        with self._open("GET", f"/files/{_segment(file_id)}/content") as response:
            while chunk := response.read(CHUNK_BYTES):
                out.write(chunk)
                written += len(chunk)
        return written

    def delete_file(self, file_id: str) -> dict[str, Any]:
        return self._call("DELETE", f"/files/{_segment(file_id)}")

    # --- jobs --------------------------------------------------------------------------------

    def create_job(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        return self._call("POST", "/fine_tuning/jobs", body=data, headers=headers)

    def list_jobs(
        self, *, after: str | None = None, limit: int = 20, metadata: dict[str, str] | None = None
    ) -> dict[str, Any]:
        # OpenAI's clients send a metadata filter as metadata[key]=value.
        query = {"after": after, "limit": limit}
        query |= {f"metadata[{k}]": v for k, v in (metadata or {}).items()}
        return self._call("GET", "/fine_tuning/jobs", query=query)

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/fine_tuning/jobs/{_segment(job_id)}")

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/fine_tuning/jobs/{_segment(job_id)}/cancel")

    def pause(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/fine_tuning/jobs/{_segment(job_id)}/pause")

    def resume(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/fine_tuning/jobs/{_segment(job_id)}/resume")

    def list_events(
        self, job_id: str, *, after: str | None = None, limit: int = 20
    ) -> dict[str, Any]:
        path = f"/fine_tuning/jobs/{_segment(job_id)}/events"
        return self._call("GET", path, query={"after": after, "limit": limit})

    def list_checkpoints(
        self, job_id: str, *, after: str | None = None, limit: int = 10
    ) -> dict[str, Any]:
        path = f"/fine_tuning/jobs/{_segment(job_id)}/checkpoints"
        return self._call("GET", path, query={"after": after, "limit": limit})

    def list_trials(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/fine_tuning/jobs/{_segment(job_id)}/trials")

    # --- HTTP --------------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        with self._open(method, path, query=query, body=body, headers=headers) as response:
            answer: dict[str, Any] = json.loads(response.read())
        return answer

    def _open(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, Any] | None = None,
        body: bytes | Iterator[bytes] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The response of one request (to read, then close); a refusal as ApiProblem."""
        url = f"{self.base_url}/v1{path}"
        pairs = {k: v for k, v in (query or {}).items() if v is not None}
        if pairs:
            url += "?" + urlencode(pairs)
        request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as e:
            with e:
                raise _problem(e.code, e.reason, e.read()) from None
        except (urllib.error.URLError, OSError) as e:
            raise self._unreachable(e, streamed=isinstance(body, Iterator)) from None

    def _unreachable(self, error: OSError, streamed: bool) -> TrimtabError:
        reason = error.reason if isinstance(error, urllib.error.URLError) else error
        if isinstance(reason, TimeoutError):
            reason = f"no answer within {self.timeout} s"
        elif streamed and isinstance(reason, BrokenPipeError | ConnectionResetError):
            # A server that refuses an upload by its size answers 413 and closes the
            # connection while the file is still being sent: all we see is the closed socket.
            return TrimtabError(
                f"the trimtab server at {self.base_url} closed the connection during the "
                "upload: the file may be larger than it accepts (trimtab serve --max-file-bytes)"
            )
        return TrimtabError(f"cannot reach the trimtab server at {self.base_url}: {reason}")


def _problem(status: int, reason: str, payload: bytes) -> ApiProblem:
    """The server's error JSON as an ApiProblem (or the bare status, from a proxy say)."""
    try:
        error = json.loads(payload)["error"]
        message = str(error["message"])
    except (ValueError, KeyError, TypeError):
        return ApiProblem(status, f"HTTP {status} {reason}".strip())
    return ApiProblem(
        status,
        message,
        param=error.get("param"),
        code=error.get("code"),
        type=error.get("type") or "invalid_request_error",
    )


def _segment(ident: str) -> str:
    # An id is one path segment: '/' and '..' must not reach another URL.
    return quote(ident, safe="")


def _form_parts(boundary: str, filename: str, purpose: str) -> tuple[bytes, bytes]:
    """The multipart form around the file's bytes: the purpose field and the file's header
    before, the closing boundary after."""
    # As browsers do: the name in UTF-8, with the characters that would end the header escaped.
    name = filename.replace('"', "%22").replace("\r", "%0D").replace("\n", "%0A")
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="purpose"\r\n\r\n'
        f"{purpose}\r\n"
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode(), f"\r\n--{boundary}--\r\n".encode()


def _remaining(source: BinaryIO) -> int | None:
    """The bytes left to read in ``source``, when it can tell (a file), else None."""
    try:
        here = source.tell()
        end = source.seek(0, os.SEEK_END)
        source.seek(here)
    except (OSError, AttributeError, ValueError):
        return None
    return end - here


def _stream(head: bytes, source: BinaryIO, tail: bytes) -> Iterator[bytes]:
    yield head
    while chunk := source.read(CHUNK_BYTES):
        yield chunk
    yield tail
