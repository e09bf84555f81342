"""FT: fine-tune the suspect encoder on the defender's clean data.

The simplest baseline of backdoor removal: training on clean data lets the
weights drift away from what only triggered inputs use. The supervised original
fine-tunes with cross-entropy on labelled clean images; here the defender holds
unlabeled images only, so the suspect is fine-tuned with the SSL loss it was
pre-trained with (SimCLR NT-Xent, harness/finetune.py) for the profile's defense
budget: the same epochs, batch and learning rate MIMIC gets.
"""

from __future__ import annotations

from harness.contract import Budget, CleanSubset, DefenseResult
from harness.finetune import FinetuneConfig, ssl_finetune
from harness.models import Encoder
from harness.registry import DEFENSES
from harness.training import seed_everything


@DEFENSES.register("ft", config=FinetuneConfig)
def ft(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: FinetuneConfig) -> DefenseResult:
    gen = seed_everything(seed, "ft")
    encoder = suspect.to(budget.device)
    trained = ssl_finetune(encoder, clean.images, budget.epochs, budget.batch_size, budget.lr, config, gen, budget.device, "ft")
    meta = {"final_loss": trained["loss_per_epoch"][-1], "finetune_seconds": trained["seconds"], "epochs": budget.epochs}
    return DefenseResult(encoder.cpu(), meta)
