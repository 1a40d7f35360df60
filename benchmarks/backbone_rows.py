"""Mamba and Hyena rows for train_throughput: size-matched configs, an older revision's
Mamba scan side by side, and a forward-only pass.

--backbones mamba hyena adds HELM's other backbones (helm_scale.models.mamba, .hyena) as
more rows of the same run, trained like ours (same engine, HXE, batch): Hyena at the
transformer's depth, width and MLP; Mamba at its width and MLP, with the depth that comes
closest to its parameter count. They take one sequence per row, so with --dataset and
--layout packed they get the padded layout of the same sequences. Their FLOPs per token
are their own (registry.flops_per_token: matmuls plus the scan / FFT convolution).
--baseline-scan REV adds one more Mamba row: the same model with helm_scale/models/mamba.py's
selective_scan as of git revision REV (loaded beside ours, swapped in for that row's
steps), so a change to the scan is measured side by side in one run. Backbone rows also
report a forward-only pass (hidden states under inference_mode, as the evaluation
commands embed sequences): tokens/s.
"""
from __future__ import annotations

import dataclasses
import importlib
import itertools
import subprocess
import sys
import types
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]


def size_matched(cfg, arch: str):
    """A Mamba or Hyena config of about ``cfg``'s parameter count (see the docstring)."""
    other = dataclasses.replace(cfg, arch=arch, position="learned" if arch == "mamba" else "none")
    if arch == "hyena":
        return other
    from helm_scale.models.registry import num_parameters
    target = num_parameters(cfg)
    return min((dataclasses.replace(other, num_layers=n) for n in range(1, 4 * cfg.num_layers + 1)),
               key=lambda c: abs(num_parameters(c) - target))


# Where mamba.py lived at a revision, newest first, and the modules it imported there that
# have since moved: the old source runs against today's modules under their old names.
MAMBA_PATHS = ("helm_scale/models/mamba.py", "helm_scale/mamba.py")
MOVED_MODULES = {"helm_scale.mixer_lm": ("helm_scale.models.mixer_lm",),
                  "helm_scale.model_config": ("helm_scale.models.config", "helm_scale.models.layers")}


def scan_at(rev: str):
    """selective_scan from Mamba's module as of git revision ``rev``, loaded as a module
    of its own beside ours."""
    for path in MAMBA_PATHS:
        shown = subprocess.run(["git", "show", f"{rev}:{path}"], cwd=ROOT, capture_output=True, text=True)
        if shown.returncode == 0:
            break
    else:
        raise SystemExit(f"--baseline-scan: no Mamba module at {rev} ({', '.join(MAMBA_PATHS)})")
    aliases = {}
    for old, news in MOVED_MODULES.items():
        if old not in sys.modules:
            alias = aliases[old] = types.ModuleType(old)
            for name in news:
                alias.__dict__.update(vars(importlib.import_module(name)))
    module = types.ModuleType(f"helm_scale_mamba_at_{rev}")
    sys.modules.update(aliases)
    sys.modules[module.__name__] = module  # its dataclasses look their module up
    try:
        exec(compile(shown.stdout, f"{rev}:{path}", "exec"), module.__dict__)
    finally:
        for old in aliases:
            del sys.modules[old]
    return module.selective_scan


def with_scan(build, scan):
    """``build``'s runner whose steps run with Mamba's selective_scan = ``scan``."""
    from helm_scale.models import mamba

    def built():
        step, model, loss_alone = build()

        def swapped():
            with mock.patch.object(mamba, "selective_scan", scan):
                step()
        return swapped, model, loss_alone
    return built


def forward_only(model, batches, scan=None):
    """One forward of a backbone's hidden states under inference_mode, as the evaluation
    commands embed sequences (with ``scan`` as Mamba's selective_scan when given)."""
    from helm_scale.models import mamba
    turns = itertools.cycle(batches)

    def step():
        with torch.inference_mode(), mock.patch.object(mamba, "selective_scan",
                                                       scan or mamba.selective_scan):
            model.hidden_states(next(turns)["input_ids"])
    return step
