"""Write a tiny random-weight llama GGUF that real llama.cpp loads and runs.

Used by the Python and TypeScript test suites and the benchmarks: no download,
a few hundred KB, loads in milliseconds. The vocabulary has byte-fallback
tokens, so the random model emits arbitrary bytes (good for UTF-8 edge cases).

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

__all__ = ["CHAT_TEMPLATE", "write_tiny_model"]

# ChatML, like SmolLM2's own template, so chat requests exercise a real template.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_UNK, _BOS, _EOS = 0, 1, 2


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
) -> Path:
    """Write the model to ``path`` and return it.

    Args:
        eos: "never" zeroes the end-of-generation row of the output matrix, so greedy
            decoding runs until ``maxTokens``; "always" makes it win every step.
        hidden: embedding width; 512 with 8 layers makes prompt processing slow
            enough to cancel mid-prompt.
        extra_tokens: more vocabulary entries, appended last (e.g. an extremely long token).
        chat_template: the template in the metadata; None writes a model without one.
        pooling_type: how the model says its embeddings pool; None says nothing.
        add_bos: whether tokenizing adds BOS (False, like SmolLM2: an empty text has no tokens).
        metadata: keys to write as given, in place of the writer's own (to craft hostile files).
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
    elif eos == "always":
        # A huge logit on every step needs a row aligned with any hidden state; the
        # final norm keeps states bounded, so a large constant row dominates.
        output[_EOS] = 50.0
    writer.add_tensor("token_embd.weight", weights(vocab, hidden))
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    for block in range(layers):
        prefix = f"blk.{block}"
        writer.add_tensor(f"{prefix}.attn_norm.weight", np.ones(hidden, dtype=np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{prefix}.{name}.weight", weights(hidden, hidden))
        writer.add_tensor(f"{prefix}.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
        writer.add_tensor(f"{prefix}.ffn_gate.weight", weights(ffn, hidden))
        writer.add_tensor(f"{prefix}.ffn_up.weight", weights(ffn, hidden))
        writer.add_tensor(f"{prefix}.ffn_down.weight", weights(hidden, ffn))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


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
