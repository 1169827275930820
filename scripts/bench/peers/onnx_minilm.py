"""Shared by the ONNX Runtime peers (onnx_embed.py, onnx_single.py): export a Hugging Face BERT
encoder to ONNX once (kept at a path between runs) and open an ONNX Runtime CPU session on it."""
import os

import onnxruntime as ort


def export_once(model_dir, onnx_path, tok, threads):
    if os.path.exists(onnx_path):
        return
    import torch
    from transformers import AutoModel

    torch.set_num_threads(threads)

    class Encoder(torch.nn.Module):
        # Keyword arguments: newer transformers reorder BertModel.forward's positional ones
        # ("got multiple values for argument 'use_cache'").
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.m(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state

    m = Encoder(AutoModel.from_pretrained(model_dir)).eval()
    enc = tok(["an example sentence", "another"], padding=True, return_tensors="pt")
    os.makedirs(os.path.dirname(os.path.abspath(onnx_path)), exist_ok=True)
    tmp = onnx_path + ".tmp"
    names = ["input_ids", "attention_mask", "token_type_ids"]
    with torch.no_grad():
        torch.onnx.export(
            m, tuple(enc[k] for k in names), tmp,
            input_names=names, output_names=["last_hidden_state"],
            dynamic_axes={k: {0: "b", 1: "s"} for k in names + ["last_hidden_state"]},
            opset_version=17, dynamo=False)
    os.replace(tmp, onnx_path)


def session(model_dir, onnx_path, tok, threads):
    """The exported encoder (exported first if missing) on `threads` intra-op threads."""
    export_once(model_dir, onnx_path, tok, threads)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
