"""The shared training loop: schedules, resumable checkpoints, and DDP equivalence (gloo, CPU)."""
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from model.checkpoint import CheckpointError, load_checkpoint
from model.config import OptimConfig, config_from_dict
from model.registry import create_model
from model.train import build_optimizer, build_scheduler, evaluate_classifier, fit, make_loader


def tiny_data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    x = torch.randn(n, 1, 8, 8, generator=g) * 0.3
    x[torch.arange(n), 0, y, y] += 3.0  # class = position of a bright pixel
    return TensorDataset(x, y)


def tiny_cfg(**over):
    values = {"model": {"name": "resnet8"}, "epochs": 8, "batch_size": 16, "eval_batch_size": 32,
              "optim": {"lr": 0.05, "warmup_epochs": 1}}
    values.update(over)
    return config_from_dict(values)


def test_cosine_schedule_warms_up_then_decays_to_zero():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler(OptimConfig(schedule="cosine", warmup_epochs=1), opt, epochs=4, steps_per_epoch=10)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:])) and lrs[-1] < 0.01


def test_step_schedule_decays_every_step_size_epochs():
    opt = build_optimizer(OptimConfig(name="adam", lr=1.0), [torch.nn.Parameter(torch.zeros(1))])
    sched = build_scheduler(OptimConfig(schedule="step", step_size=2, gamma=0.5), opt, epochs=6, steps_per_epoch=3)
    lrs = []
    for _ in range(18):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step(), sched.step()
    assert lrs[::3] == pytest.approx([1, 1, 0.5, 0.5, 0.25, 0.25])


def test_fit_learns_writes_files_and_resumes(tmp_path):
    data = tiny_data()
    model = create_model("resnet8", num_classes=4)
    result = fit(model, tiny_cfg(), data, data, tmp_path / "run", kind="dense", model_name="resnet8",
                 model_args={"num_classes": 4}, device="cpu", progress=False)
    assert result.final["top1"] > 60
    assert (tmp_path / "run" / "train_curve.png").stat().st_size > 1000
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt", kind="dense")
    assert ckpt["epoch"] == 8 and len(ckpt["history"]) == 8

    # Resume an 8-epoch run to 10 epochs: continues from epoch 8, keeps the history.
    model2 = create_model("resnet8", num_classes=4)
    result2 = fit(model2, tiny_cfg(epochs=10), data, data, tmp_path / "run", kind="dense", model_name="resnet8",
                  model_args={"num_classes": 4}, device="cpu", resume=tmp_path / "run" / "checkpoint.pt", progress=False)
    assert [h["epoch"] for h in result2.history] == list(range(1, 11))


def test_resuming_from_the_wrong_kind_of_checkpoint_is_refused(tmp_path):
    data = tiny_data(16)
    fit(create_model("resnet8", num_classes=4), tiny_cfg(epochs=1), data, data, tmp_path, kind="dense",
        model_name="resnet8", model_args={}, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match="expected a 'tree'"):
        fit(create_model("resnet8", num_classes=4), tiny_cfg(epochs=2), data, data, tmp_path / "b", kind="tree",
            model_name="resnet8", model_args={}, device="cpu", resume=tmp_path / "checkpoint.pt", progress=False)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(kind):
    """The dense model, or a tree cut from it, with its training loss (the one `fit` uses)."""
    torch.manual_seed(0)
    dense = create_model("resnet8", num_classes=4)
    if kind == "dense":
        return dense, lambda model, x, y: F.cross_entropy(model(x), y)
    from model.finetune import sigma_branch_loss
    from model.tree_layout import build_tree, default_spec
    # No router dropout: its random masks would differ between the two runs.
    tree = build_tree(dense, default_spec("resnet8", {"num_classes": 4}, dense, dropout=0.0))
    return tree, lambda model, x, y: sigma_branch_loss(*model(x, mode="leaves"), y)


def _ddp_worker(rank, world, port, out, kind):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    from model.distributed import init_distributed
    init_distributed(torch.device("cpu"))
    model, loss_fn = build(kind)
    # Each rank evaluates its shard of the test set; the metrics are summed across ranks.
    metrics = evaluate_classifier(model, make_loader(tiny_data(32, seed=1), 8, False, 0), torch.device("cpu"))
    ddp = torch.nn.parallel.DistributedDataParallel(model.train())
    x, y = tiny_data(32)[:]
    half = slice(rank * 16, (rank + 1) * 16)
    loss_fn(ddp, x[half], y[half]).backward()
    if rank == 0:
        torch.save({"grads": {n: p.grad for n, p in model.named_parameters()}, "metrics": metrics}, out)
    torch.distributed.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["dense", "tree"])
def test_ddp_on_two_processes_matches_one_process(tmp_path, kind):
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, free_port(), str(out), kind), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)

    # One process, same semantics: each replica's BN sees its own half-batch, DDP averages grads.
    model, loss_fn = build(kind)
    single = evaluate_classifier(model, make_loader(tiny_data(32, seed=1), 8, False, 0), torch.device("cpu"))
    x, y = tiny_data(32)[:]
    model.train()
    loss = (loss_fn(model, x[:16], y[:16]) + loss_fn(model, x[16:], y[16:])) / 2
    loss.backward()
    for name, p in model.named_parameters():
        # Only the order of float summation differs (all-reduce vs autograd).
        torch.testing.assert_close(ddp["grads"][name], p.grad, rtol=1e-5, atol=1e-6, msg=name)
    assert ddp["metrics"]["top1"] == single["top1"] and ddp["metrics"]["top5"] == single["top5"]
    assert ddp["metrics"]["loss"] == pytest.approx(single["loss"], rel=1e-6)


def test_resumable_continues_only_a_checkpoint_of_the_same_settings(tmp_path):
    from model.checkpoint import save_checkpoint
    from model.config import config_from_dict
    from model.train import resumable

    cfg = config_from_dict({"epochs": 3, "optim": {"lr": 0.05}})
    path = tmp_path / "checkpoint.pt"
    assert resumable(path, cfg) is None  # nothing to continue
    older = cfg.to_dict()
    del older["quant"]["route_distill"]  # written before that field existed: its default applies
    save_checkpoint(path, kind="dense", config=older)
    assert resumable(path, cfg) == path
    with pytest.raises(ValueError, match=r"checkpoint.pt was written with other settings \(differing: optim\)"):
        resumable(path, config_from_dict({"epochs": 3, "optim": {"lr": 0.1}}))
