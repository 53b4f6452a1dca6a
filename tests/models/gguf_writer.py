"""Write a small float32 GGUF of a Qwen2-architecture model, as llama.cpp would lay it out."""

import json
from pathlib import Path

import gguf
from transformers import PreTrainedModel, PreTrainedTokenizerFast

EOS = "<|endoftext|>"


def write_qwen2_gguf(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, path: Path
) -> Path:
    """Save `model` (a tied-embedding qwen2) and its byte-level BPE `tokenizer` as one GGUF file."""
    config = model.config
    arch = gguf.MODEL_ARCH.QWEN2
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])

    state = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    # Named as in real Qwen2 files: transformers' Qwen2Tokenizer appends one if it is missing.
    tokens = [
        EOS if t == tokenizer.eos_token else t
        for t in sorted(state["vocab"], key=state["vocab"].get)
    ]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in state["merges"]])
    special = set(tokenizer.all_special_ids)
    writer.add_token_types(
        [
            gguf.TokenType.CONTROL if i in special else gguf.TokenType.NORMAL
            for i in range(len(tokens))
        ]
    )
    writer.add_bos_token_id(tokenizer.bos_token_id)
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)

    names = gguf.get_tensor_name_map(arch, config.num_hidden_layers)
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":  # tied to the embedding; GGUF signals that by omitting it
            continue
        stem, suffix = name.rsplit(".", 1)
        writer.add_tensor(f"{names.get_name(stem)}.{suffix}", tensor.numpy())
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
