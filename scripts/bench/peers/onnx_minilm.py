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


def quantize_once(onnx_path, int8_path):
    """ONNX Runtime's own dynamic int8 quantisation of the exported model, the documented way:
    `quant_pre_process` (ONNX shape inference and ORT graph optimisation), then `quantize_dynamic` with its
    defaults (int8 weights, activations quantised at run time)."""
    if os.path.exists(int8_path):
        return
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = int8_path + ".pre.onnx"
    tmp = int8_path + ".tmp"
    # Symbolic shape inference cannot follow the exported attention mask's shapes ("Incomplete
    # symbolic shape inference"); ONNX's own shape inference and ORT's optimiser still run.
    quant_pre_process(onnx_path, pre, skip_symbolic_shape=True)
    quantize_dynamic(pre, tmp, weight_type=QuantType.QInt8)
    os.remove(pre)
    os.replace(tmp, int8_path)


def session(model_dir, onnx_path, tok, threads, int8=False):
    """The exported encoder (exported first if missing) on `threads` intra-op threads; with
    `int8`, its `quantize_dynamic` copy (made first if missing) beside it."""
    export_once(model_dir, onnx_path, tok, threads)
    if int8:
        int8_path = onnx_path[: -len(".onnx")] + ".int8.onnx"
        quantize_once(onnx_path, int8_path)
        onnx_path = int8_path
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])
