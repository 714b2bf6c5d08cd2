"""The model and its mathematics: the CLIP text encoder, the cross-attention U-Net, EDM
preconditioning and loss (the denoiser contract), noise schedules, samplers and classifier-free
guidance. Nothing here reads files or knows about prompts on disk."""
