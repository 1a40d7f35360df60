"""The networks, each a helm_scale.models.base.LanguageModel; import from the modules:

    config          ModelConfig, pad_vocab (no torch: configurations load anywhere)
    layers          attention masks, rotary tables, dtype names -> torch dtypes
    base            LanguageModel: the interface the trainer, export and evaluation use
    transformer     the transformer (one device; its block also serves tensor parallelism)
    tp_transformer  the same network on megatron-core's tensor-parallel layers
    lstm, mamba, hyena (+ mixer_lm, their shared base)   the other backbones, TP 1
    registry        model.arch -> network; parameter and FLOP counts
"""
