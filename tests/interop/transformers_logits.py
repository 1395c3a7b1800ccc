"""`python transformers_logits.py HF_DIR TOKENS.npy OUT.npy`: the logits transformers'
LlamaForCausalLM computes from an exported directory (float32, eager attention). Run by
test_hf_export.py with a Python that has torch and transformers (see docs/interop.md)."""

import sys

import numpy as np
import torch
from transformers import LlamaForCausalLM

if __name__ == "__main__":
    directory, tokens, out = sys.argv[1:]
    model = LlamaForCausalLM.from_pretrained(directory, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(np.load(tokens)).long()).logits
    np.save(out, logits.float().numpy())
