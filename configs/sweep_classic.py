# The classic architecture experiment: GPT-2, then GPT-2 with one llama component at a time, then llama,
# each with 3 seeds. Every run gets the same data and token budget, and for one seed the same batches;
# the report (means, 95% intervals, paired tests against gpt2) lands in runs/classic/report.md.
#   python -m modgpt.sweep configs/sweep_classic.py --backend=torch          # GPU: minutes per run
#   python -m modgpt.sweep configs/sweep_classic.py --size=cpu --max_iters=300 --lr_decay_iters=300 \
#       --batch_size=32 --eval_interval=100 --eval_iters=20                   # CPU: a few minutes per run
# Any --key=value after the file overrides the values below for every run.
variants = ["gpt2", "gpt2+rope", "gpt2+rmsnorm", "gpt2+swiglu", "llama"]
name = "classic"
dataset = "shakespeare_char"
size = "small-char"  # 6L-6H-384D, block 256: nanoGPT's baby GPT
dropout = 0.0  # no regularizer in an ablation: differences come from the components
batch_size = 64
learning_rate = 1e-3
min_lr = 1e-4
beta2 = 0.99
warmup_iters = 100
max_iters = 2000
lr_decay_iters = 2000
eval_interval = 250
eval_iters = 100
seed = 1337  # the first of the seeds
seeds = 3
