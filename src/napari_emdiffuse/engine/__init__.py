"""The diffusion engine: network, diffusion process, samplers, tiling. Torch only: no files, no Qt."""
