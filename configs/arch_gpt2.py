# GPT-2 (124M) as published and as nanoGPT implements it: learned positions, LayerNorm, exact GELU,
# pre-norm with a final LayerNorm, 4x MLP, biases, LM head tied to the token embedding.
# python -m modgpt_jax.train configs/arch_gpt2.py
preset = "gpt2"
size = "124M"
