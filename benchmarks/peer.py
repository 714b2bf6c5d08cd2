"""diffgen against a peer, side by side in one process: diffusers' UNet2DConditionModel configured
to the default config's widths, levels and attention, driven by its DPMSolverMultistepScheduler
(DPM-Solver++(2M), Karras sigmas) at the same step count and guidance, on pixels like ours.

Run: .venv/bin/python benchmarks/peer.py   (needs the bench extra: pip install -e '.[bench]')
"""

from __future__ import annotations

import torch
from speed import time_it  # benchmarks/ is on sys.path when this file runs as a script
from torch.utils.flop_counter import FlopCounterMode

from diffgen.config import Config
from diffgen.engine.model import build_model
from diffgen.sampling.generate import ImageTask, generate

STEPS, GUIDANCE = 20, 3.0


def diffusers_unet(cfg: Config, context_dim: int, pooled_dim: int):
    from diffusers import UNet2DConditionModel

    u = cfg.unet
    levels = [cfg.image_size // 2**i for i in range(len(u.channel_mult))]
    attn = [res in u.attention_resolutions for res in levels]
    return UNet2DConditionModel(
        sample_size=cfg.image_size, in_channels=3, out_channels=3,
        block_out_channels=tuple(u.base_channels * m for m in u.channel_mult),
        layers_per_block=u.num_res_blocks,
        down_block_types=tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attn),
        up_block_types=tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attn)),
        cross_attention_dim=context_dim,
        # diffusers' legacy name: this is the number of heads, chosen for head_dim channels per head
        attention_head_dim=tuple(max(1, u.base_channels * m // u.head_dim) for m in u.channel_mult),
        class_embed_type="projection", projection_class_embeddings_input_dim=pooled_dim,
        norm_num_groups=min(32, u.base_channels),
    ).eval()


def diffusers_sample(unet, scheduler, tokens, pooled, uncond_tokens, uncond_pooled, batch, size, seed=0):
    gen = torch.Generator().manual_seed(seed)
    scheduler.set_timesteps(STEPS)
    x = torch.randn(batch, 3, size, size, generator=gen) * scheduler.init_noise_sigma
    context = torch.cat([tokens.expand(batch, -1, -1), uncond_tokens.expand(batch, -1, -1)])
    classes = torch.cat([pooled.expand(batch, -1), uncond_pooled.expand(batch, -1)])
    with torch.inference_mode():
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(torch.cat([x, x]), t)
            eps_c, eps_u = unet(model_in, t, encoder_hidden_states=context, class_labels=classes).sample.chunk(2)
            x = scheduler.step(eps_u + GUIDANCE * (eps_c - eps_u), t, x).prev_sample
    return x


def main() -> None:
    import diffusers
    from diffusers import DPMSolverMultistepScheduler

    cfg = Config()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    ours = model.denoiser.net
    enc = model.text_encoder
    theirs = diffusers_unet(cfg, enc.token_dim, enc.pooled_dim)
    scheduler = DPMSolverMultistepScheduler(num_train_timesteps=1000, algorithm_type="dpmsolver++",
                                            solver_order=2, use_karras_sigmas=True)
    with torch.inference_mode():
        cond, _ = model.encode_prompts(["a panda on a bike"])
        uncond, _ = model.encode_prompts([""])
    print(f"diffusers {diffusers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"default config ({cfg.image_size} px), dpmpp-2m / DPMSolverMultistep(2M, Karras), {STEPS} steps, "
          f"guidance {GUIDANCE}\n")
    print("| batch | diffgen U-Net params | diffusers U-Net params | diffgen GFLOP/forward | diffusers GFLOP/forward "
          "| diffgen s/image | diffusers s/image | diffgen / diffusers time |")
    print("|---|---|---|---|---|---|---|---|")
    size = cfg.image_size
    for batch in (1, 16):
        x = torch.randn(2 * batch, 3, size, size)
        tokens = torch.cat([cond.tokens, uncond.tokens]).repeat_interleave(batch, 0)
        pooled = torch.cat([cond.pooled, uncond.pooled]).repeat_interleave(batch, 0)
        with FlopCounterMode(display=False) as ours_flops, torch.inference_mode():
            ours(x, torch.zeros(2 * batch), tokens, pooled)
        with FlopCounterMode(display=False) as their_flops, torch.inference_mode():
            theirs(x, torch.tensor(500), encoder_hidden_states=tokens, class_labels=pooled)
        tasks = [ImageTask(index=k, prompt="a panda on a bike", seed=k, steps=STEPS, guidance=GUIDANCE, upscale=False)
                 for k in range(batch)]
        ours_s = time_it(lambda: list(generate(model, tasks, batch_size=batch)), 3) / batch
        theirs_s = time_it(lambda: diffusers_sample(theirs, scheduler, cond.tokens, cond.pooled,
                                                    uncond.tokens, uncond.pooled, batch, size), 3) / batch
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
        print(f"| {batch} | {count(ours) / 1e6:.2f} M | {count(theirs) / 1e6:.2f} M | "
              f"{ours_flops.get_total_flops() / 1e9:.2f} | {their_flops.get_total_flops() / 1e9:.2f} | "
              f"{ours_s:.3f} | {theirs_s:.3f} | {ours_s / theirs_s:.2f} |")


if __name__ == "__main__":
    main()
