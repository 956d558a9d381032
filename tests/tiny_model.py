"""Write a tiny random-weight llama GGUF that real llama.cpp loads and runs.

Used by the Python and TypeScript test suites and the benchmarks: no download,
a few hundred KB, loads in milliseconds. The vocabulary has byte-fallback
tokens, so the random model emits arbitrary bytes (good for UTF-8 edge cases).

What a random model writes depends on floating-point details that differ between
CPUs and llama.cpp builds, so a test may rely only on what holds by construction:
the default model never ends under greedy decoding (proved on its weights by
``tests/test_tiny_model.py``), ``eos="always"`` ends at once, ``pinned_logits``
fix some tokens' logits, and a grammar (``LETTERS_FOREVER``) fixes the text's shape.

    python tests/tiny_model.py OUT.gguf [--eos never|always] [--hidden 64] [--layers 2]
                               [--no-chat-template]
"""

from __future__ import annotations

import argparse
import string
from collections.abc import Mapping
from pathlib import Path

import gguf
import numpy as np
from gguf.gguf_writer import GGUFValue

__all__ = ["CHAT_TEMPLATE", "LETTERS_FOREVER", "write_tiny_model"]

# ChatML, like SmolLM2's own template, so chat requests exercise a real template.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# One letter a token, and no way to end: under it any model, however random, streams a
# chunk for every token and runs to maxTokens (or the end of the context).
LETTERS_FOREVER = "root ::= [a-z] root"

_UNK, _BOS, _EOS = 0, 1, 2
_PINNED_EOS_LOGIT = 50.0


def _vocabulary(extra: tuple[str, ...] = ()) -> tuple[list[str], list[float], list[int]]:
    tokens = ["<unk>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    types = [
        gguf.TokenType.UNKNOWN,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
        gguf.TokenType.CONTROL,
    ]
    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    types += [gguf.TokenType.BYTE] * 256
    pieces = ["▁"] + list(string.ascii_letters + string.digits + string.punctuation)
    pieces += ["▁" + letter for letter in string.ascii_lowercase]
    pieces += ["▁the", "▁and", "▁hello", "▁world", "é", "ü", "€", "日本", "😀", *extra]
    tokens += pieces
    types += [gguf.TokenType.NORMAL] * len(pieces)
    scores = [0.0] * (len(tokens) - len(pieces)) + [-float(i) for i in range(len(pieces))]
    return tokens, scores, [int(t) for t in types]


def write_tiny_model(
    path: Path,
    *,
    eos: str = "never",
    hidden: int = 64,
    layers: int = 2,
    context_length: int = 2048,
    seed: int = 0,
    extra_tokens: tuple[str, ...] = (),
    chat_template: str | None = CHAT_TEMPLATE,
    pooling_type: gguf.PoolingType | None = None,
    add_bos: bool = True,
    metadata: Mapping[str, GGUFValue] | None = None,
    pinned_logits: Mapping[str, float] | None = None,
) -> Path:
    """Write the model to ``path`` and return it.

    Args:
        eos: "never" zeroes the output rows of the end-of-generation tokens (``</s>``,
            ``<|im_end|>``): their logit is 0 while, with the default width and vocabulary,
            some other logit is positive for every hidden state, so greedy decoding runs until
            ``maxTokens``; "always" pins ``</s>`` at a logit near 50, so it wins every step.
        hidden: embedding width; 512 with 8 layers makes prompt processing slow
            enough to cancel mid-prompt.
        extra_tokens: more vocabulary entries, appended last (e.g. an extremely long token).
        chat_template: the template in the metadata; None writes a model without one.
        pooling_type: how the model says its embeddings pool; None says nothing.
        add_bos: whether tokenizing adds BOS (False, like SmolLM2: an empty text has no tokens).
        metadata: keys to write as given, in place of the writer's own (to craft hostile files).
        pinned_logits: token text -> the logit it gets at every step, whatever the input
            (within a few percent, the same factor for all pinned tokens); every other logit
            stays below 2. E.g. ``{"a": 40, "b": 30}``: greedy decoding writes only a's.
    """
    rng = np.random.default_rng(seed)
    tokens, scores, types = _vocabulary(extra_tokens)
    vocab, heads, ffn = len(tokens), 4, hidden * 2

    def weights(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * 0.02).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny-random-llama")
    writer.add_file_type(0)  # all tensors F32
    writer.add_context_length(context_length)
    writer.add_embedding_length(hidden)
    writer.add_block_count(layers)
    writer.add_feed_forward_length(ffn)
    writer.add_head_count(heads)
    writer.add_head_count_kv(heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(_UNK)
    writer.add_bos_token_id(_BOS)
    writer.add_eos_token_id(_EOS)
    writer.add_add_bos_token(add_bos)
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    if pooling_type is not None:
        writer.add_pooling_type(pooling_type)
    for key, value in (metadata or {}).items():
        writer.kv_data[0].pop(key, None)  # replaced without the writer's duplicate-key warning
        writer.add_key_value(key, value.value, value.type, value.sub_type)

    output = weights(vocab, hidden)
    if eos == "never":
        output[_EOS] = 0.0
        output[tokens.index("<|im_end|>")] = 0.0
    pinned = {tokens.index(text): logit for text, logit in (pinned_logits or {}).items()}
    if eos == "always":
        pinned[_EOS] = _PINNED_EOS_LOGIT
    # Drawn in the order the tensors are written: without pins, the same seed gives the same file.
    embeddings = weights(vocab, hidden)
    shapes = dict.fromkeys(("attn_q", "attn_k", "attn_v", "attn_output"), (hidden, hidden))
    shapes |= {"ffn_gate": (ffn, hidden), "ffn_up": (ffn, hidden), "ffn_down": (hidden, ffn)}
    blocks = [{name: weights(*shape) for name, shape in shapes.items()} for _ in range(layers)]
    if pinned:
        _pin(pinned, output, embeddings, blocks)
    writer.add_tensor("token_embd.weight", embeddings)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    for block, tensors in enumerate(blocks):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{prefix}.{name}.weight", tensors[name])
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        for name in ("ffn_gate", "ffn_up", "ffn_down"):
            writer.add_tensor(f"{prefix}.{name}.weight", tensors[name])

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _pin(
    logits: Mapping[int, float],
    output: np.ndarray,
    embeddings: np.ndarray,
    blocks: list[dict[str, np.ndarray]],
) -> None:
    """Give these tokens these logits at every step, whatever the input.

    Dimension 0 of the residual stream becomes a constant: every embedding has 1 there
    and no layer writes to it (the rows of ``attn_output`` and ``ffn_down`` for it are
    zero). The final RMS norm scales the state to length sqrt(hidden), that dimension
    to sqrt(hidden) / sqrt(1 + r²), where r, the length of the rest of the state, is
    about 0.3. A pinned token's output row reads that dimension only: its logit is its
    value / sqrt(1 + r²), about 0.95 of it, the same factor for every pinned token. A
    random row (entries of 0.02) gives at most its length times sqrt(hidden), under 2.
    """
    hidden = embeddings.shape[1]
    embeddings[:, 0] = 1.0
    for tensors in blocks:
        tensors["attn_output"][0] = 0.0
        tensors["ffn_down"][0] = 0.0
    for token, logit in logits.items():
        output[token] = 0.0
        output[token, 0] = logit / np.sqrt(hidden)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", type=Path)
    parser.add_argument("--eos", choices=("never", "always"), default="never")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--no-chat-template", action="store_true", help="write no chat template")
    args = parser.parse_args()
    template = None if args.no_chat_template else CHAT_TEMPLATE
    write_tiny_model(args.path, eos=args.eos, hidden=args.hidden, layers=args.layers, chat_template=template)


if __name__ == "__main__":
    main()
