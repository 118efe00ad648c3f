# The team's model_v1: the llama components under the team's own preset name, so runs and reports
# say "team". Change a component here (e.g. normalization = "layernorm") to start model_v2.
preset = "team"
size = "124M"
