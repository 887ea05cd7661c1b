"""Once with real weights: SmolLM2-135M and a LoRA run trained here, served and called with the
official client (completions, chat, streaming, base and fine-tune side by side)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.server.conftest import API_KEY, run_server


@pytest.fixture(scope="module")
def smollm2_run(tmp_path_factory: pytest.TempPathFactory, marc: Path) -> Path:
    """A LoRA run on SmolLM2, 4 steps on 32 MARC reviews (enough to load and answer)."""
    from trimtab.training import load_config, train

    rows = list(csv.DictReader(open(marc / "en" / "train.csv", encoding="utf-8")))
    picked = [r for i, r in enumerate(rows) if i % 400 == 0][:32]
    root = tmp_path_factory.mktemp("real-serve")
    data = root / "train.jsonl"
    data.write_text(
        "".join(
            json.dumps(
                {"prompt": r["review_body"][:300] + "\n\n###\n\n", "completion": " " + r["stars"]}
            )
            + "\n"
            for r in picked
        )
    )
    config = load_config(
        None,
        [
            f"data.train={data}",
            "model.name=smollm2-135m",
            "method.name=lora",
            f"run_dir={root / 'runs' / 'stars'}",
            "max_steps=4",
            "batch_size=8",
            "model.max_length=128",
        ],
    )
    train(config, progress=False)
    return root / "runs"


@pytest.mark.real_model
def test_real_smollm2_and_its_lora_run_answer_through_the_openai_client(smollm2_run):
    from openai import OpenAI

    from trimtab.generation.engine import Engine
    from trimtab.generation.pool import ModelPool
    from trimtab.server.app import create_app

    pool = ModelPool(smollm2_run)
    engine = Engine(pool)
    try:
        with run_server(create_app(engine, pool, api_key=API_KEY)) as url:
            client = OpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120)
            ids = [m.id for m in client.models.list().data]
            (tuned,) = [i for i in ids if i.startswith("ft:smollm2-135m:")]
            assert "smollm2-135m" in ids
            prompt = "Great blender, crushes ice in seconds.\n\n###\n\n"
            base = client.completions.create(
                model="smollm2-135m", prompt="The capital of France is", max_tokens=3, temperature=0
            )
            assert "Paris" in base.choices[0].text
            streamed = "".join(
                c.choices[0].text
                for c in client.completions.create(
                    model=tuned, prompt=prompt, max_tokens=3, temperature=0, stream=True
                )
                if c.choices
            )
            whole = client.completions.create(
                model=tuned, prompt=prompt, max_tokens=3, temperature=0
            )
            assert streamed == whole.choices[0].text and whole.usage.completion_tokens >= 1
            chat = client.chat.completions.create(
                model="smollm2-135m",
                messages=[{"role": "user", "content": "Say hello."}],
                max_completion_tokens=8,
                temperature=0,
            )
            assert chat.choices[0].message.content and chat.choices[0].message.role == "assistant"
    finally:
        engine.close()
