# A character-level Shakespeare model in the spirit of nanoGPT's baby GPT (6L-6H-384D, block 256):
# minutes on a GPU; on a CPU use the auto size instead (no size keys) or lower max_iters.
preset = "gpt2"
dataset = "shakespeare_char"
n_layer = 6
n_head = 6
n_embd = 384
block_size = 256
dropout = 0.2
batch_size = 64
learning_rate = 1e-3
min_lr = 1e-4
max_iters = 5000
lr_decay_iters = 5000
warmup_iters = 100
beta2 = 0.99
eval_interval = 250
eval_iters = 200
log_interval = 10
weight_decay = 0.1
