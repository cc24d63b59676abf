"""Run by tests/test_distributed.py under torchrun: each rank seeds as training does and draws."""
import json
import sys

import torch
import torch.distributed as torch_dist

from acol import dist
from acol.train import seed_everything

dist.init_distributed("cpu")
seed_everything(int(sys.argv[1]), deterministic=False)
draws = [None] * dist.get_world_size()
torch_dist.all_gather_object(draws, torch.rand(4).tolist())
if dist.is_main_process():
    print(json.dumps(draws))
dist.cleanup()
