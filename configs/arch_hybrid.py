# GPT-2 with RoPE instead of learned positions: LayerNorm, GELU, pre-norm, 4x MLP, bias, tied head.
preset = "hybrid"
size = "124M"
