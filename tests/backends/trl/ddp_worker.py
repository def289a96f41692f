"""One process of a two-process (torch.distributed.run, CPU/gloo) trl run, for
test_trl_backend.test_two_processes_compute_advantages_on_the_gathered_batch. Argument: a JSON object
with the data.custom entry, the export's train/val files, the run's settings (RunSettings.as_dict),
the `trl` block and the run directory."""

import json
import sys

import torch

from eqpo.backends.trl.trainer import run_training
from eqpo.core.vocabularies import register_dataset
from eqpo.data.custom import spec_from_entry
from eqpo.runs.settings import RunSettings

torch.set_num_threads(1)
args = json.loads(sys.argv[1])
register_dataset(spec_from_entry(args["entry"]))
run_training(
    args["train"],
    args["val"],
    RunSettings.from_dict(args["settings"]),
    args["trl"],
    0,
    args["run"],
    log=lambda message: None,
)
