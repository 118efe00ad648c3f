# Every option, commented: copy this file and edit. Keys not set here take the schema defaults
# (modgpt/config.py); `python -m modgpt.config configs/arch_custom.py` prints the result.

# --- architecture ------------------------------------------------------------------------------
n_layer = 12                      # transformer blocks
n_head = 12                       # attention heads; n_embd must be divisible by it
n_embd = 768                      # model width
n_kv_head = 0                     # key/value heads: 0 = n_head, 1 = multi-query, else grouped-query (divides n_head)
block_size = 1024                 # context length (the learned position table's size)
vocab_size = 50304                # set from the data's meta.json when not given (padded to 64 for BPE)
normalization = "rmsnorm"         # layernorm | layernorm_nobias | rmsnorm
norm_eps = 1e-5                   # epsilon of every norm
activation = "gelu"               # gelu (exact erf) | gelu_tanh (GPT-2's) | silu | relu | leaky_relu (slope 0.01)
position_encoding = "rope"        # learned_absolute | rope | alibi | none
rope_theta = 10000.0              # RoPE base (half-split layout, see docs/backend_contract.md)
attention_backend = "sdpa"        # sdpa (fused/flash where available) | manual (explicit softmax)
qk_norm = False                   # normalize q and k per head with `normalization`
norm_position = "pre"             # pre (GPT-2, llama) | post (original Transformer)
ffn_type = "glu"                  # standard (4x) | swiglu (8/3x, SiLU gate) | glu (8/3x, gate = activation: GeGLU...)
ffn_hidden = 0                    # 0 = the rule above (gated: 8/3 x n_embd rounded up to a multiple of 32)
bias = False                      # biases in every Linear (never in the LM head)
weight_tying = False              # LM head shares the token embedding
dropout = 0.0                     # embeddings, attention probabilities, residual branches
init_std = 0.02                   # N(0, init_std); residual projections / sqrt(2 * n_layer)

# --- training ----------------------------------------------------------------------------------
batch_size = 12                   # sequences per micro step (global, across all devices)
gradient_accumulation_steps = 1
learning_rate = 6e-4
min_lr = 6e-5                     # cosine decays to this
warmup_iters = 100
lr_decay_iters = 5000
max_iters = 5000
weight_decay = 0.1                # AdamW, on parameters with ndim >= 2 only
beta1 = 0.9
beta2 = 0.95
adam_eps = 1e-8
grad_clip = 1.0                   # global-norm clipping; 0 disables
eval_interval = 250               # evaluate and checkpoint every N iterations
eval_iters = 20
log_interval = 10
seed = 1337
dtype = "bfloat16"                # float32 | bfloat16 | float16 (torch only: GradScaler)
compile = True                    # torch.compile (torch backend)
dataset = "shakespeare"           # shakespeare_char | shakespeare | a directory prepared under data_dir
data_dir = "data"
out_dir = ""                      # "" = runs/<time>-<backend>-<arch>
init_from = "scratch"             # scratch | resume | nanogpt:PATH | FILE.safetensors
keep_checkpoints = 3
skip_nonfinite = False            # skip steps with non-finite loss/grads instead of stopping
progress = True                   # progress bar on a terminal

# --- system ------------------------------------------------------------------------------------
device = "auto"                   # auto | cpu | cuda | gpu
size = "none"                     # auto | none | tiny | cpu | small-char | 124M | 350M | 774M | 1558M
parallel = "none"                 # torch under torchrun: none | ddp | zero1 | fsdp
mesh_data = -1                    # jax mesh: data-parallel axis (-1 = remaining devices)
mesh_fsdp = 1                     # jax mesh: FSDP axis (params and optimizer state sharded)
remat = False                     # jax: recompute block activations in the backward pass
scan_layers = False               # jax: nnx.scan over blocks (faster compile for deep models)
peak_tflops = 0.0                 # per-device peak for MFU; 0 = look the device up
