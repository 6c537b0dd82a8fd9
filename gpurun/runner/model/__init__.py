"""The base model: find out what a checkpoint is, load it frozen (or build a tiny one), and hold its parts.

    load.py        load_base_model: a single file, a diffusers folder, a hub id or a tiny model, frozen, SDPA
    loaded.py      LoadedModel: the components, tokenizing and kohya-style conditioning, the sampling pipeline
    detect.py      which family (SD 1.x / 2.x / SDXL) a checkpoint or folder is, and why
    bundled.py     the bundled config folders (configs/) that load single files with no hub access
    clip_bpe.py    CLIP tokenizers from the vendored BPE vocabulary (configs/), and a tiny one for tests
    tiny.py        tiny random-weight pipelines of the real topologies, for tests and dry runs
    ldm_layout.py  diffusers → original single-file layout (writes the tiny models' checkpoints)

Imports go downward only: load → detect, loaded, bundled, tiny; tiny → loaded, clip_bpe, ldm_layout;
bundled → clip_bpe. Nothing here imports the rest of the runner.
"""
