#!/usr/bin/env python
"""FCOS head towers, conv vs recurrent: training-step and inference time on synthetic_shapes
(a benchmark, not a test).

Builds the detector of ``experiment=synthetic_shapes_detection`` once per ``rnn`` in ``--layers``
(``crnn.builders.compose_config`` / ``build_task``: the model ``crnn-train`` builds) and generates a
small synthetic_shapes set (``--images`` training images, batch 16, in a temporary folder). Then, in
interleaved rounds (contention on a shared machine hits every model alike), each model runs
``--steps`` training steps (forward with the FCOS losses, backward, a step of the experiment's
optimizer) on the same batches and one inference pass (eval mode, boxes after NMS) over them; data
loading is not timed, and a first round (first calls, allocations) is not recorded. Prints the median
time per training step and per inference batch, the ratio to ``rnn=none``, the training part of a
synthetic_shapes epoch (1,000 images = 63 steps) and each model's per-round ratio of the training step
to the first model's (paired within a round: the steadier figure).

    python scripts/bench_towers.py                                  # none, sws_birnn; 1 thread
    python scripts/bench_towers.py --layers none,srnn,sws_birnn --rounds 5 --threads 2
    python scripts/bench_towers.py --clock cpu                      # CPU time: a shared machine
"""

from __future__ import annotations

import argparse
import statistics
import tempfile

import torch
from bench_clock import CLOCKS, add_clock_argument

from crnn.builders import build_datamodule, build_task, compose_config
from crnn.complexity import count_params
from crnn.runtime import keep_freed_memory

CLOCK = CLOCKS["wall"]  # main() sets --clock
EPOCH_STEPS = 63  # synthetic_shapes: 1,000 training images, batch 16


def build(layer: str, data_dir: str, images: int):
    cfg = compose_config(
        [
            "experiment=synthetic_shapes_detection",
            f"rnn={layer}",
            f"data.root={data_dir}",
            f"data.num_train={images}",
            "data.num_val=16",
            "data.num_workers=0",
            "seed=0",
        ]
    )
    torch.manual_seed(0)
    datamodule = build_datamodule(cfg)
    task = build_task(cfg, datamodule)
    return datamodule, task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--layers", default="none,sws_birnn", help="rnn choices, comma-separated")
    parser.add_argument("--images", type=int, default=64, help="training images generated (batch 16)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per model and round")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (medians reported)")
    parser.add_argument("--threads", type=int, default=1)
    add_clock_argument(parser)
    args = parser.parse_args(argv)
    keep_freed_memory()  # as crnn-train does
    global CLOCK
    CLOCK = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    layers = args.layers.split(",")

    with tempfile.TemporaryDirectory() as data_dir:
        models = {}
        for layer in layers:
            datamodule, task = build(layer, data_dir, args.images)
            datamodule.prepare_data()
            datamodule.setup("fit")
            batches = list(datamodule.train_dataloader())
            net = task.net
            opt = task.optimizer_factory(net.parameters())  # the experiment's, as crnn-train builds it
            params = count_params(net)
            models[layer] = (net, opt, batches, params)
    print(
        f"synthetic_shapes, batch {len(models[layers[0]][2][0][0])}, {args.threads} thread(s), "
        f"{args.steps} steps x {args.rounds} rounds, {args.clock} clock"
    )

    train: dict[str, list[float]] = {k: [] for k in layers}
    infer: dict[str, list[float]] = {k: [] for k in layers}
    for round_ in range(-1, args.rounds):  # round -1: not recorded
        for layer, (net, opt, batches, _) in models.items():
            net.train()
            start = CLOCK()
            for step in range(args.steps):
                images, targets = batches[step % len(batches)]
                losses = net(images, [{"boxes": t["boxes"], "labels": t["labels"]} for t in targets])
                opt.zero_grad(set_to_none=True)
                sum(losses.values()).backward()
                opt.step()
            step_time = (CLOCK() - start) / args.steps
            net.eval()
            start = CLOCK()
            with torch.no_grad():
                net(batches[0][0])
            if round_ >= 0:
                train[layer].append(step_time)
                infer[layer].append(CLOCK() - start)

    base_train, base_infer = statistics.median(train[layers[0]]), statistics.median(infer[layers[0]])
    print(
        f"{'rnn':12s} {'params':>9s} {'train s/step':>13s} {'x ' + layers[0]:>8s} "
        f"{'epoch train s':>14s} {'infer s/batch':>14s} {'x ' + layers[0]:>8s}"
    )
    for layer in layers:
        t, i = statistics.median(train[layer]), statistics.median(infer[layer])
        print(
            f"{layer:12s} {models[layer][3]:9,d} {t:13.3f} {t / base_train:8.2f} "
            f"{t * EPOCH_STEPS:14.1f} {i:14.3f} {i / base_infer:8.2f}"
        )
    print("(x: time relative to the first layer; < 1 is faster)")
    if args.rounds >= 2:
        # each round's ratio pairs two measurements taken seconds apart: a shared machine's slow drifts
        # (which move the medians above by several percent between runs) cancel in it
        print(f"training step, per-round ratio x {layers[0]} (median, quartiles; ratio of the totals):")
        for layer in layers[1:]:
            ratios = [t / b for t, b in zip(train[layer], train[layers[0]], strict=True)]
            low, _, high = statistics.quantiles(ratios, n=4)
            total = sum(train[layer]) / sum(train[layers[0]])
            print(f"  {layer:12s} {statistics.median(ratios):.3f} ({low:.3f}-{high:.3f}); {total:.3f}")
    print("per round, train s/step:")
    for layer in layers:
        print(f"  {layer:12s} {[round(v, 3) for v in train[layer]]}")


if __name__ == "__main__":
    main()
