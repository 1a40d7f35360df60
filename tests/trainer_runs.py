"""Training runs inside the ranks of tests.dist_utils.run_ranks: the real Trainer on
configs/tiny.yaml with overrides, each run's evaluation before and after it."""
from __future__ import annotations

from tests.torchrun_utils import TINY


def train_and_evaluate(rank, world_size, dataset, run_dir, overrides_list):
    import warnings
    warnings.filterwarnings("ignore")
    from helm_scale.train_config import load_train_config
    from helm_scale.trainer import Trainer
    results = []
    for i, overrides in enumerate(overrides_list):
        cfg = load_train_config(TINY, [f"data.dataset_dir={dataset}", f"run.run_dir={run_dir}/{i}",
                                       "data.num_workers=0", *overrides])
        cfg.check(world_size)
        trainer = Trainer(cfg)
        before = trainer.evaluate()
        summary = trainer.fit()
        results.append({"before": before, "after": summary["eval"], "train": summary["train"]})
    return results
