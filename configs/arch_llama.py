# Llama-style components at GPT-2 124M dimensions: RoPE, RMSNorm, SwiGLU (8/3x), pre-norm, no bias,
# untied LM head. python -m modgpt_jax.train configs/arch_llama.py
preset = "llama"
size = "124M"
