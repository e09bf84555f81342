"""FT: fine-tune the suspect encoder on the defender's clean data.

The simplest baseline of backdoor removal: training on clean data lets the
weights drift away from what only triggered inputs use. The supervised original
fine-tunes with cross-entropy on labelled clean images; here the defender holds
unlabeled images only, so the suspect is fine-tuned with the SSL loss it was
pre-trained with (SimCLR NT-Xent, harness/finetune.py).

Budget: FT has no paper of its own; its reference recipe is the fine-tuning of
Fine-Pruning's common re-implementation (BackdoorBench: 100 epochs over the
clean subset), so FT and FP's fine-tuning are one recipe, scaled by the budget.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from harness.contract import MIN_EPOCHS, Budget, CleanSubset, DefenseResult
from harness.finetune import FinetuneConfig, FinetuneSteps, ssl_finetune
from harness.models import Encoder
from harness.registry import DEFENSES
from harness.training import seed_everything


@dataclass(frozen=True)
class FTConfig:
    epochs: int = 100  # reference fine-tuning epochs (scaled by the budget)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)

    def steps(self, budget: Budget) -> FinetuneSteps:
        return FinetuneSteps(finetune_epochs=budget.steps(self.epochs, MIN_EPOCHS))


@DEFENSES.register("ft", config=FTConfig)
def ft(suspect: Encoder, clean: CleanSubset, budget: Budget, seed: int, config: FTConfig) -> DefenseResult:
    gen = seed_everything(seed, "ft")
    epochs = config.steps(budget).finetune_epochs
    encoder = suspect.to(budget.device)
    trained = ssl_finetune(encoder, clean.images, epochs, budget, config.finetune, gen, "ft")
    meta = {"final_loss": trained["loss_per_epoch"][-1], "finetune_seconds": trained["seconds"], "steps": config.steps(budget).as_dict()}
    return DefenseResult(encoder.cpu(), meta)
