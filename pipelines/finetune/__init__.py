"""Fine-tuning recipes: LoRA (:mod:`lora`) and DreamBooth-LoRA (:mod:`dreambooth`) for every family.

Shared pieces: :mod:`config` (one validated config per recipe), :mod:`data` (image validation,
captions, buckets), :mod:`cache` (latents and text embeddings on disk), :mod:`checkpoint` (atomic
checkpoints, exact resume), :mod:`families` (what differs between sd1/sd2/sdxl/sd3/flux),
:mod:`validation` (rendering through the governed seam), :mod:`tracking` (MLflow) and
:mod:`interop` (diffusers and kohya LoRA files). ``dreambooth.run`` is the one entry point.
"""
