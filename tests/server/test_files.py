"""``/v1/files`` with the official client: upload, retrieve, list, content, delete, and the
refusals (bad lines, wrong format, too large, ids that try to leave the files folder)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx2
import openai
import pytest

from tests.server.conftest import API_KEY, JOBS_MAX_FILE_BYTES

ROWS = [{"prompt": f"review {i}: great\n\n###\n\n", "completion": " 5"} for i in range(4)]
CONTENT = "".join(json.dumps(r) + "\n" for r in ROWS).encode()


def upload(client, name: str = "train.jsonl", content: bytes = CONTENT):
    return client.files.create(file=(name, content), purpose="fine-tune")


def stored(home: Path) -> list[Path]:
    """Every file in the data folder's files/, hidden ones (partial uploads) included."""
    folder = home / "files"
    return sorted(folder.iterdir()) if folder.exists() else []


def test_an_upload_is_retrieved_read_back_and_deleted(jobs_client, jobs_live):
    made = upload(jobs_client)
    assert made.id.startswith("file-") and made.object == "file"
    assert (made.filename, made.bytes, made.purpose, made.status) == (
        "train.jsonl",
        len(CONTENT),
        "fine-tune",
        "processed",
    )
    got = jobs_client.files.retrieve(made.id)
    assert got.model_dump() == made.model_dump()
    assert jobs_client.files.content(made.id).content == CONTENT
    deleted = jobs_client.files.delete(made.id)
    assert (deleted.id, deleted.deleted, deleted.object) == (made.id, True, "file")
    with pytest.raises(openai.NotFoundError):
        jobs_client.files.retrieve(made.id)
    with pytest.raises(openai.NotFoundError):
        jobs_client.files.content(made.id)
    assert stored(jobs_live.home) == []


def test_files_are_listed_by_purpose_in_either_order_page_by_page(jobs_client, jobs_live):
    ids = [upload(jobs_client, f"part{i}.jsonl").id for i in range(3)]
    jobs_live.service.add_result_file("step_metrics.csv", b"step,train_loss\n1,0.5\n")
    everything = jobs_client.files.list()
    assert len(everything.data) == 4
    tuning = jobs_client.files.list(purpose="fine-tune")
    assert sorted(f.id for f in tuning.data) == sorted(ids)
    oldest_first = [f.id for f in jobs_client.files.list(purpose="fine-tune", order="asc").data]
    newest_first = [f.id for f in jobs_client.files.list(purpose="fine-tune", order="desc").data]
    assert oldest_first == newest_first[::-1] and sorted(oldest_first) == sorted(ids)
    first = jobs_client.files.list(purpose="fine-tune", order="asc", limit=2)
    assert [f.id for f in first.data] == oldest_first[:2] and first.has_more is True
    rest = jobs_client.files.list(
        purpose="fine-tune", order="asc", limit=2, after=first.data[-1].id
    )
    assert [f.id for f in rest.data] == oldest_first[2:] and rest.has_more is False
    # The client's own paging follows `after` through every page.
    paged = jobs_client.files.list(purpose="fine-tune", order="asc", limit=1)
    assert [f.id for f in paged] == oldest_first


def test_a_bad_list_parameter_is_a_400_naming_it(jobs_client):
    with pytest.raises(openai.BadRequestError) as e:
        jobs_client.files.list(limit=0)
    assert e.value.param == "limit"
    with pytest.raises(openai.BadRequestError) as e:
        jobs_client.files.list(extra_query={"limit": "many"})
    assert e.value.param == "limit" and "many" in e.value.message


def test_a_malformed_jsonl_upload_is_a_400_naming_the_line_and_keeps_nothing(
    jobs_client, jobs_live
):
    content = CONTENT.splitlines(keepends=True)
    bad = b"".join(content[:2]) + b'{"prompt": "unfinished\n' + content[3]
    with pytest.raises(openai.BadRequestError) as e:
        upload(jobs_client, "broken.jsonl", bad)
    assert "Invalid file broken.jsonl: line 3: invalid JSON" in e.value.message
    assert e.value.param == "file"
    assert stored(jobs_live.home) == [] and jobs_client.files.list().data == []


def test_a_file_that_is_not_jsonl_is_refused(jobs_client, jobs_live):
    with pytest.raises(openai.BadRequestError) as e:
        upload(jobs_client, "train.csv", b"prompt,completion\na,b\n")
    assert e.value.param == "file" and ".jsonl" in e.value.message
    assert stored(jobs_live.home) == []


def test_a_purpose_other_than_fine_tune_is_refused(jobs_client):
    with pytest.raises(openai.BadRequestError) as e:
        jobs_client.files.create(file=("train.jsonl", CONTENT), purpose="assistants")
    assert e.value.param == "purpose"


def test_an_upload_without_a_file_is_a_400_naming_it(jobs_live):
    with httpx2.Client(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        response = http.post(f"{jobs_live.v1}/files", data={"purpose": "fine-tune"})
    assert response.status_code == 400 and response.json()["error"]["param"] == "file"


def test_an_upload_over_max_file_bytes_is_a_413_and_leaves_no_file(jobs_client, jobs_live):
    line = json.dumps({"prompt": "x" * 200, "completion": " y"}).encode() + b"\n"
    big = line * (JOBS_MAX_FILE_BYTES // len(line) + 1)
    with pytest.raises(openai.APIStatusError) as e:
        upload(jobs_client, "big.jsonl", big)
    assert e.value.status_code == 413 and e.value.code == "file_too_large"
    assert str(JOBS_MAX_FILE_BYTES) in e.value.message
    assert stored(jobs_live.home) == [] and jobs_client.files.list().data == []


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_an_upload_far_over_the_limit_is_cut_off_by_the_guard(jobs_live, chunked):
    # Past max_file_bytes plus room for the form, the guard stops reading: the route never
    # runs, so nothing is spooled to disk past the limit, let alone kept.
    limit = JOBS_MAX_FILE_BYTES + 1024 * 1024
    boundary = "b0undary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="x.jsonl"\r\n'
        "\r\n"
    ).encode()
    payload = [head, *([b"x" * 65536] * (limit // 65536 + 2)), f"\r\n--{boundary}--\r\n".encode()]
    headers = {
        "Authorization": f"Bearer {API_KEY}",
        "Content-Type": f"multipart/form-data; boundary={boundary}",
    }
    with httpx2.Client(timeout=30) as http:
        body = iter(payload) if chunked else b"".join(payload)
        response = http.post(f"{jobs_live.v1}/files", content=body, headers=headers)
        assert ("content-length" in response.request.headers) is not chunked
        assert response.status_code == 413
        error = response.json()["error"]
        assert error["code"] == "file_too_large" and str(limit) in error["message"]
        # The server goes on serving.
        listed = http.get(f"{jobs_live.v1}/files", headers=headers)
        assert listed.status_code == 200 and listed.json()["data"] == []
    assert stored(jobs_live.home) == []


@pytest.mark.parametrize("file_id", ["../../etc/passwd", "file-../x", "../jobs.db", "file-..\\x"])
def test_a_file_id_with_path_characters_is_a_404_and_reads_nothing(jobs_client, jobs_live, file_id):
    (jobs_live.home / "secret.jsonl").write_text('{"secret": "do not serve"}\n')
    upload(jobs_client)
    for call in (
        jobs_client.files.retrieve,
        jobs_client.files.content,
        jobs_client.files.delete,
    ):
        with pytest.raises(openai.NotFoundError) as e:
            call(file_id)
        assert "do not serve" not in str(e.value.body)
    assert len(jobs_client.files.list().data) == 1  # nothing was deleted either


def test_raw_paths_that_climb_out_of_files_are_404(jobs_live):
    (jobs_live.home / "secret.jsonl").write_text('{"secret": "do not serve"}\n')
    with httpx2.Client(headers={"Authorization": f"Bearer {API_KEY}"}) as http:
        for path in (
            "/files/..%2Fsecret/content",
            "/files/file-..%2F..%2Fsecret/content",
            "/files/%2E%2E/content",
            "/files/..%2Fjobs.db",
        ):
            response = http.get(f"{jobs_live.v1}{path}")
            assert response.status_code == 404, path
            assert "do not serve" not in response.text and "error" in response.json()


def test_a_wrong_api_key_is_a_401_on_files_and_jobs(jobs_live):
    from openai import OpenAI

    with OpenAI(base_url=jobs_live.v1, api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.files.list()
        assert e.value.code == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            wrong.files.create(file=("train.jsonl", CONTENT), purpose="fine-tune")
        with pytest.raises(openai.AuthenticationError):
            wrong.fine_tuning.jobs.list()
        with pytest.raises(openai.AuthenticationError):
            wrong.fine_tuning.jobs.create(model="m", training_file="file-x")
    assert stored(jobs_live.home) == []
