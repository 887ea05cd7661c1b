"""A completion's text and its tokens' log-probabilities go out together: a token whose text
is held back (it may start a stop sequence) or cut (it is in one) is not listed."""

from __future__ import annotations

from pathlib import Path

from trimtab.generation.sequence import Sequence


def _tokens(tokenizer, text: str) -> list[int]:
    return tokenizer.encode(text, add_special_tokens=False)


def test_logprobs_are_held_back_with_their_text_and_dropped_with_a_stop_sequence(
    tiny_tokenizer_dir: Path,
):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_tokenizer_dir)
    ids = _tokens(tokenizer, "Great product works as described")
    stop = "works"
    seq = Sequence(tokenizer, [stop], max_tokens=100, eos=set(), want_logprobs=True)
    shown_text, shown_tokens = "", []
    for token in ids:
        seq.push(token, -0.5)
        text, logprobs = seq.take()
        shown_text += text
        shown_tokens += logprobs
        # every token listed so far starts inside the text shown so far
        assert all(t.text_offset < len(shown_text) for t in shown_tokens)
        if seq.finish:
            break
    assert seq.finish == "stop" and stop not in shown_text
    assert shown_text == "Great product "[: len(shown_text)] and shown_text.startswith("Great")
    assert "".join(t.token for t in shown_tokens).startswith(shown_text.rstrip())
    assert all(stop not in t.token for t in shown_tokens)
