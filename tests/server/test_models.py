"""``/v1/models``, ``/health`` and the API key, on the real pool and engine."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import httpx2
import openai
import pytest

from tests.server.conftest import API_KEY


def test_models_lists_the_base_model_and_every_run(client, base_id, run_ids):
    models = client.models.list()
    ids = [m.id for m in models.data]
    assert base_id in ids and set(run_ids.values()) <= set(ids)
    assert all(m.object == "model" and m.owned_by and m.created > 0 for m in models.data)
    by_id = {m.id: m for m in models.data}
    lora = by_id[run_ids["lora-a"]]
    assert lora.id.startswith("ft:") and lora.model_extra["parent"] == base_id
    assert by_id[run_ids["classes"]].model_extra["task"] == "classify"


def test_a_model_is_found_by_an_id_holding_colons_and_slashes(client, base_id, run_ids):
    tuned = client.models.retrieve(run_ids["lora-a"])
    assert tuned.id == run_ids["lora-a"] and tuned.object == "model"
    base = client.models.retrieve(base_id)  # an absolute folder path
    assert base.id == base_id and base.model_extra["root"] == base_id


def test_an_unknown_model_is_a_404_model_not_found(client):
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("ft:nothing:trimtab:gone:12345678")
    assert e.value.code == "model_not_found" and e.value.type == "invalid_request_error"


def test_deleting_a_run_removes_it(client, spare_run, runs_dir):
    deleted = client.models.delete(spare_run)
    assert deleted.id == spare_run and deleted.deleted is True and deleted.object == "model"
    assert spare_run not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(spare_run)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model=spare_run, prompt="x")


def _linked_trial(runs_dir: Path, target: Path, child: str) -> str:
    """A copy of a LoRA run at ``target`` served as a sweep's trial is: linked into the runs
    folder as ``runs/<child-job-id>``, its model named with the child's id; that id."""
    shutil.copytree(runs_dir / "lora-a", target)
    meta_file = target / "final" / "trimtab.json"
    model_id = f"ft:tiny:trimtab::{child}"
    meta_file.write_text(json.dumps(json.loads(meta_file.read_text()) | {"model_id": model_id}))
    os.symlink(target, runs_dir / child, target_is_directory=True)
    return model_id


def test_deleting_a_sweep_trial_s_linked_run_removes_the_link_and_its_folder(
    client, live, runs_dir, tmp_path, monkeypatch
):
    jobs = tmp_path / "home" / "jobs"
    monkeypatch.setattr(live.pool, "managed_dirs", [jobs])  # as serve() passes its jobs folder
    trials = jobs / "ftjob-sweep" / "sweep" / "trials"
    child = f"ftjob-trial{uuid.uuid4().hex[:12]}"
    model_id = _linked_trial(runs_dir, trials / "trial-000", child)
    assert client.models.retrieve(model_id).id == model_id
    answer = httpx2.delete(
        f"{live.v1}/models/{model_id}", headers={"Authorization": f"Bearer {API_KEY}"}
    )
    assert answer.status_code == 200
    assert answer.json() == {"id": model_id, "object": "model", "deleted": True}
    assert not os.path.lexists(runs_dir / child) and list(trials.iterdir()) == []
    assert model_id not in [m.id for m in client.models.list().data]
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve(model_id)


def test_deleting_a_run_linked_from_outside_the_server_s_folders_only_unlinks_it(
    client, live, runs_dir, tmp_path
):
    mine = tmp_path / "my-experiments" / "run-1"
    child = f"mine-{uuid.uuid4().hex[:12]}"
    model_id = _linked_trial(runs_dir, mine, child)
    deleted = client.models.delete(model_id)
    assert deleted.id == model_id and deleted.deleted is True
    assert not os.path.lexists(runs_dir / child)
    assert (mine / "final" / "trimtab.json").is_file()  # the folder the link named is kept
    assert (mine / "final" / "adapter_config.json").is_file()
    assert model_id not in [m.id for m in client.models.list().data]


def test_a_base_model_cannot_be_deleted(client, base_id, tiny_llama_dir):
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.models.delete(base_id)
    assert e.value.status_code == 403 and e.value.param == "model"
    assert (tiny_llama_dir / "config.json").is_file()


def test_a_wrong_or_missing_api_key_is_a_401(live, base_id):
    from openai import OpenAI

    with OpenAI(base_url=live.v1, api_key="sk-wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as e:
            wrong.completions.create(model=base_id, prompt="x", max_tokens=1)
        assert e.value.code == "invalid_api_key" and e.value.type == "invalid_request_error"
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()
    with httpx2.Client() as http:
        response = http.get(f"{live.v1}/models")
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer" in response.json()["error"]["message"]


def test_health_answers_without_a_key(live):
    with httpx2.Client() as http:
        response = http.get(f"{live.url}/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


def test_the_right_key_is_accepted(live):
    with httpx2.Client() as http:
        response = http.get(f"{live.v1}/models", headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 200 and response.json()["object"] == "list"
