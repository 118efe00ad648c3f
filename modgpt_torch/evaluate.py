"""python -m modgpt_torch.evaluate --out_dir=RUN [--tasks hellaswag] [--input FILE] [--limit N]
[--json FILE] [--skip_unencodable] [--device D]: multiple-choice tasks on the latest checkpoint."""
from __future__ import annotations

import sys

from modgpt import cli
from modgpt import evaluate as E


def loglik_fn(model, device):
    """loglik(x, y, mask) -> per-row sums of log p(y | x) over the mask, in float32 logits."""
    import torch

    @torch.no_grad()
    def loglik(x, y, mask):
        logits = model(torch.as_tensor(x, device=device))[0].float()
        lp = torch.log_softmax(logits, -1).gather(-1, torch.as_tensor(y, dtype=torch.int64, device=device)[..., None])
        return (lp[..., 0] * torch.as_tensor(mask, device=device)).sum(-1).double().cpu().numpy()
    return loglik


def main(argv=None) -> int:
    opt = E.settings("python -m modgpt_torch.evaluate", argv)
    from modgpt_torch import checkpoint as CK
    device = CK.inference_device(opt.device)
    try:
        model, cfg, _ = CK.load_model(opt.out_dir, device=device)
    except CK.CheckpointError as e:
        cli.fail(str(e))
    model.eval()
    return E.run(opt, cfg, loglik_fn(model, device))


if __name__ == "__main__":
    sys.exit(main())
