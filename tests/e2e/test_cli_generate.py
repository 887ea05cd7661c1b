"""``trimtab complete`` and ``trimtab chat``: the engine from the command line."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from trimtab.cli import build_parser, main
from trimtab.generation import SamplingParams, generate


def _expected(model_dir: Path, prompt: str, **params) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    return generate(model, tokenizer, [prompt], SamplingParams(**params))[0].text


def test_complete_streams_the_greedy_completion_to_stdout(tiny_llama_dir, capsys):
    code = main(
        [
            "complete",
            str(tiny_llama_dir),
            "Great product",
            "--temperature",
            "0",
            "--max-tokens",
            "8",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert out == _expected(tiny_llama_dir, "Great product", temperature=0, max_tokens=8) + "\n"


def test_complete_with_n_prints_each_completion_under_a_header(tiny_llama_dir, capsys):
    args = [
        "complete",
        str(tiny_llama_dir),
        "Great",
        "--n",
        "2",
        "--seed",
        "3",
        "--max-tokens",
        "4",
    ]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "--- completion 1 (length)" in out and "--- completion 2 (length)" in out


def test_complete_refuses_a_bad_option_naming_its_flag(tiny_llama_dir, capsys):
    assert main(["complete", str(tiny_llama_dir), "Hi", "--top-p", "0"]) == 2
    assert "--top-p: must be greater than 0" in capsys.readouterr().err


def test_complete_of_an_unknown_model_says_it_does_not_exist(capsys):
    assert main(["complete", "no-such-model", "Hi"]) == 2
    assert "The model 'no-such-model' does not exist" in capsys.readouterr().err


def test_chat_keeps_the_history_and_ends_on_exit(tiny_llama_dir, capsys, monkeypatch):
    from trimtab.generation.pool import ModelPool

    seen: list[str] = []
    render = ModelPool.render_chat

    def spy(self, model_id, messages):
        seen.append(" | ".join(f"{m['role']}:{m['content']}" for m in messages))
        return render(self, model_id, messages)

    monkeypatch.setattr(ModelPool, "render_chat", spy)
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nagain\n/exit\nnever read\n"))
    args = ["chat", str(tiny_llama_dir), "--system", "be brief", "--max-tokens", "3"]
    assert main([*args, "--temperature", "0"]) == 0
    assert seen[0] == "system:be brief | user:hello"
    assert seen[1].startswith("system:be brief | user:hello | assistant:")
    assert seen[1].endswith("| user:again") and len(seen) == 2


def test_serve_options_use_uvicorns_names_and_bind_loopback_by_default():
    args = build_parser().parse_args(["serve"])
    assert (args.host, args.port, args.api_key) == ("127.0.0.1", 8000, None)


@pytest.mark.parametrize("command", ["complete", "chat"])
def test_generation_commands_take_the_shared_sampling_options(command):
    extra = ["PROMPT"] if command == "complete" else []
    args = build_parser().parse_args(
        [command, "m", *extra, "--temperature", "0.5", "--stop", "x", "--stop", "y"]
    )
    assert (args.temperature, args.stop) == (0.5, ["x", "y"])


def test_trimtab_serve_answers_the_official_client_and_stops_on_ctrl_c(tiny_llama_dir, tmp_path):
    import os
    import signal
    import socket
    import subprocess
    import sys
    import time

    from openai import OpenAI

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "trimtab", "serve", str(tiny_llama_dir), "--port", str(port)]
    env = {**os.environ, "TRIMTAB_API_KEY": "sk-local"}
    server = subprocess.Popen(
        [*command, "--runs", str(tmp_path), "--log-level", "warning"], env=env
    )
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="sk-local", max_retries=0)
        deadline = time.monotonic() + 60
        while True:
            try:
                models = client.models.list()
                break
            except Exception:
                assert server.poll() is None and time.monotonic() < deadline, "did not start"
                time.sleep(0.2)
        assert str(tiny_llama_dir) in [m.id for m in models.data]
        answer = client.completions.create(
            model=str(tiny_llama_dir), prompt="Great product", max_tokens=5, temperature=0
        )
        expected = _expected(tiny_llama_dir, "Great product", temperature=0, max_tokens=5)
        assert answer.choices[0].text == expected
    finally:
        server.send_signal(signal.SIGINT)
        code = server.wait(timeout=30)
    assert code in (0, 130)  # uvicorn's graceful stop, or the CLI's interrupted status
