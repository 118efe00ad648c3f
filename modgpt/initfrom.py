"""--init_from=FILE.safetensors | nanogpt:PATH | hf:NAME_OR_DIR, read before setup so that the file fixes the
architecture. Both train commands share this, so both take the same files the same way."""
from __future__ import annotations

from dataclasses import dataclass, fields

from modgpt import config as C
from modgpt import hf, nanogpt
from modgpt import weights as W
from modgpt.loop import SetupError
from modgpt.presets import SIZES

# Model options the weights do not hold: a run may set them freely (fine-tuning with dropout, another
# attention kernel for the same function).
NOT_IN_WEIGHTS = ("dropout", "attention_backend", "init_std")


@dataclass
class Source:
    path: str
    tensors: dict  # canonical name -> float32 numpy array
    model: C.ModelConfig  # the architecture the file holds
    hf_dir: str | None = None  # the transformers model directory of an hf: source (its tokenizer files)


def preload(args) -> Source | None:
    """Read the --init_from file (None for scratch/resume) and make its architecture the run's:
    args.config and args.explicit are updated; a model option given that disagrees is refused."""
    init = args.config.train.init_from
    if init.startswith("nanogpt:"):
        path = init[len("nanogpt:"):]
        margs, state = nanogpt.read_checkpoint(path)
        given = {k: getattr(args.config.model, k) for k in args.explicit if C.KEY_SECTION[k] == "model"}
        model = C.from_flat(nanogpt.model_config(margs, given)).model
        tensors = nanogpt.to_canonical(state, model, f"nanoGPT checkpoint '{path}'")
    elif hf.spec_of(init) is not None:
        spec = hf.spec_of(init)
        path = f"hf:{spec}"
        # the checkpoint's context is a maximum: a run may train on shorter sequences (learned
        # positions keep their first rows, as nanoGPT's crop_block_size does)
        crop = args.config.model.block_size if "block_size" in args.explicit else None
        try:
            tensors, flat, directory = hf.load(spec, crop)
        except hf.HFError as e:
            raise SetupError(str(e)) from None
        if crop is not None and crop > flat["block_size"]:
            raise SetupError(f"{path} holds a context of {flat['block_size']} tokens but the run asks for "
                             f"--block_size={crop}; pass at most {flat['block_size']}")
        model = C.from_flat(flat).model
        adopt(args, model, path)
        return Source(path, tensors, model, directory)
    elif init.endswith(".safetensors"):
        path = init
        tensors, cfg = W.load(path)
        model = cfg.model
    else:
        return None
    adopt(args, model, path)
    return Source(path, tensors, model)


def adopt(args, model: C.ModelConfig, source: str) -> None:
    """The file's value for every model option the user did not set; one the user did set (directly or
    through --size) must equal the file's unless the weights do not hold it."""
    asked = {k: getattr(args.config.model, k) for k in args.explicit if C.KEY_SECTION[k] == "model"}
    if "size" in args.explicit and args.config.system.size in SIZES:
        asked = {**SIZES[args.config.system.size], **asked}
    keep = {}
    for f in fields(C.ModelConfig):
        k, have = f.name, getattr(model, f.name)
        if k not in asked or k in NOT_IN_WEIGHTS:
            keep[k] = asked.get(k, have)
        elif asked[k] != have:
            opt = f"--{k}" if k in args.explicit else f"--size={args.config.system.size}"
            raise SetupError(f"{source} holds {k}={have!r} but the run asks for {asked[k]!r} ({opt}); drop {opt}: "
                             f"the file fixes the architecture")
    args.config = args.config.replace(**keep, size="none")
    args.explicit = set(args.explicit) | set(keep)
