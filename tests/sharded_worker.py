"""One FSDP2 (fully_shard) training run of a tiny GenSSL model on gloo; see tests/test_sharded.py."""
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, sys.argv[4])  # the repository, for tests.test_sharded
from tests.test_sharded import batches, make_model, step  # noqa: E402

out, first, last = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
model = make_model()
for block in model.modules():
    if type(block).__name__ in model._no_split_modules:
        fully_shard(block)
fully_shard(model)
optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
if first > 0:  # resume from the sharded checkpoint
    model_state, optim_state = get_state_dict(model, optimizer)  # the structure to load the shards into
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(out / "sharded"))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
losses = {}
for i, batch in enumerate(batches()):
    if first <= i < last:
        rows = slice(rank * len(batch["input_ids"]) // world, (rank + 1) * len(batch["input_ids"]) // world)
        loss = step(model, optimizer, {k: v[rows] for k, v in batch.items()})
        dist.all_reduce(loss)  # a sum (gloo has no average): equal target counts per rank make it the global mean
        losses[i] = loss.item() / world
model_state, optim_state = get_state_dict(model, optimizer)
dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(out / "sharded"))  # every rank its shard
full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
if rank == 0:
    plain = make_model()
    plain.load_state_dict(full)
    plain.save_pretrained(out / "final")
    (out / f"losses-{first}.json").write_text(json.dumps(losses))
dist.barrier()
(out / f"done-{first}-rank{rank}").touch()  # every file the test reads is written (rank 0's before the barrier)
dist.destroy_process_group()
# torch 2.13 on gloo can abort after this point, while the interpreter finalises ("terminate called without an
# active exception", SIGABRT; seen once in CI, not in 10 local tries under load). Nothing is left to do, so
# leave without finalising; test_sharded.launch tells such a teardown crash from a failed run by the done files.
sys.stdout.flush()
sys.stderr.flush()
os._exit(0)
