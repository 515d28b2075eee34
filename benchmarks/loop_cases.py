"""benchmarks/step.py cases that time what the training loop runs, not a bare step.

  loop      one iteration of train.py's loop, through the library's own code: this rank's next
            real batch from the loader, noise drawn on the device, the D update on B/2 real +
            B/2 fake then the G update on B latents (`train.schedule=both`), the statistics
            added on the device, the stop-flag check, and one statistics read per log window.
            With graphs the D and G updates are GraphedSteps replays (perf.cuda_graphs=true).
  data      the loader alone (capsgan_dist/loader.py): batches of B images of the config's
            size, float in [-1, 1] on the device; 20 batches a step
  data_ref  the same images through the DataLoader train.py used before it (TensorImages item
            by item, EpochShuffle, drop_last, num_workers=0, prepared by Accelerate), 20 a step

Data cases use 10,000 synthetic images (MNIST's test-set count) of the config's size.
"""

from __future__ import annotations

import itertools

import torch

N_IMAGES = 10_000
BATCHES_PER_STEP = 20  # data cases: one batch takes well under a millisecond; time 20 at once


def _accelerator(device: str, dtype: str):
    """An Accelerator as dist.setup makes it, in this dtype (a fresh state if another dtype ran here first)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    precision = "bf16" if dtype == "bf16" else "no"
    done = AcceleratorState._shared_state.get("_mixed_precision")
    if done is not None and done != precision:
        # --inprocess times several dtypes in one process, Accelerate allows one: start over (the
        # cases of the earlier dtype are finished; those of one group share its dtype).
        AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=precision, cpu=device == "cpu")


def loop_case(config: str, batch: int, device: str, dtype: str, compile_: bool, graphs: bool):
    """(step function, images per step, optimizers) for the loop's own iteration at global batch `batch`."""
    from capsgan_dist import optim
    from capsgan_dist.config import load_config
    from capsgan_dist.data import load_images
    from capsgan_dist.dist import Dist
    from capsgan_dist.loader import DeviceBatches
    from capsgan_dist.models import build_discriminator, build_generator
    from capsgan_dist.step_stats import StepStats
    from capsgan_dist.steps import EagerSteps, iteration
    from capsgan_dist.stop import StopFlag

    half = batch // 2
    cfg = load_config(config, [f"train.batch_real={half}", f"train.batch_fake={batch - half}", "train.schedule=both",
                               f"train.mixed_precision={'bf16' if dtype == 'bf16' else 'no'}",
                               f"perf.cuda_graphs={str(graphs).lower()}", "data.name=synthetic",
                               f"data.synthetic_size={N_IMAGES}"])
    dist = Dist(_accelerator(device, dtype), _accelerator(device, dtype))  # two sharing one state, as setup()
    torch.manual_seed(0)
    G, D = build_generator(cfg), build_discriminator(cfg)
    betas = (cfg.optim.beta1, cfg.optim.beta2)
    opt_g = optim.build_adam(G.parameters(), cfg.optim.lr_g, betas, fused=True)
    opt_d = optim.build_adam(D.parameters(), cfg.optim.lr_d, betas, fused=True)
    if compile_:
        G.compile()
        D.compile()
    G, opt_g = dist.acc_g.prepare(G, opt_g)
    D, opt_d = dist.acc_d.prepare(D, opt_d)
    real = DeviceBatches(load_images(cfg.data), half, cfg.seed, dist.device).stream()
    clip = cfg.optim.grad_clip or float("inf")
    if graphs:
        from capsgan_dist.cuda_graphs import GraphedSteps

        steps = GraphedSteps(cfg, dist, G, D, opt_g, opt_d, real, clip)
    else:
        steps = EagerSteps(cfg, dist, G, D, dist.acc_d.unwrap_model(D), opt_g, opt_d, real, clip)
    stats = StepStats(dist.device, cfg.train.max_nonfinite)
    stop = StopFlag()  # not entered: no handlers installed, the check itself is what runs
    counter = itertools.count()

    def step():
        s = next(counter)
        iteration(steps, stats, s, cfg)
        done = s + 1
        if done % cfg.train.log_every == 0:  # the loop's one read per window
            stats.read()
            stats.new_window()
        stop.agreed(dist, done, cfg.train.stop_check_every)

    return step, batch, (opt_d, opt_g)


def data_case(case: str, config: str, batch: int, device: str, dtype: str):
    """(step function, images per step) for the loader (`data`) or the DataLoader it replaced (`data_ref`)."""
    from capsgan_dist.config import load_config
    from capsgan_dist.data import load_images

    cfg = load_config(config, ["data.name=synthetic", f"data.synthetic_size={N_IMAGES}"])
    images = load_images(cfg.data)
    dev = torch.device(device)
    if case == "data":
        from capsgan_dist.loader import DeviceBatches

        stream = DeviceBatches(images, batch, cfg.seed, dev).stream()
    else:
        stream = _dataloader_stream(images, batch, cfg.seed, _accelerator(device, dtype))

    def step():
        for _ in range(BATCHES_PER_STEP):
            x = next(stream)
        return x

    return step, batch * BATCHES_PER_STEP


def _dataloader_stream(images: torch.Tensor, batch: int, seed: int, accelerator):
    """Endless batches from the DataLoader as train.py built and prepared it before loader.py."""
    from torch.utils.data import DataLoader

    from capsgan_dist.data import EpochShuffle, TensorImages

    loader = DataLoader(TensorImages(images), batch_size=batch, sampler=EpochShuffle(len(images), seed),
                        drop_last=True, num_workers=0)
    loader = accelerator.prepare(loader)
    for epoch in itertools.count():
        loader.set_epoch(epoch)
        yield from loader
