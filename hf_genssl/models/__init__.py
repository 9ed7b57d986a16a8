"""The remote-code set: everything a saved checkpoint carries so it loads without hf_genssl installed.

``save_pretrained`` copies a model's ``configuration_*.py`` / ``modeling_*.py`` file and the files it imports with
single-dot relative imports into the checkpoint, so every module here imports only its siblings, torch and
transformers (``tests/test_layout.py`` checks it). Everything else (collators, training loops, data, CLI) lives
outside this folder.
"""
