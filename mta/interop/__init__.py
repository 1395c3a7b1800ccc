"""Hugging Face checkpoints in and out (docs/interop.md).

    hf_import.import_hf(hf_dir, config, workdir)   # config.json + safetensors -> step 0
    hf_export.export_hf(workdir, step, out)        # a checkpoint -> safetensors + config.json

hf_config.py maps config.json's fields to the model's keys (and refuses what the model cannot
express), hf_weights.py each parameter to its tensor name and layout, hf_files.py reads the
directory (index, shards, tokenizer) with the safetensors library.
"""
