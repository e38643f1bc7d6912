"""Replayable augmentation views: the contract between stage one and stage two.

A view is (sample key, view index). ``recipe`` names the augmentations; ``params`` turns (recipe,
seed, key, view, image size) into explicit parameters with counter-based RNG, on the CPU;
renderers turn parameters plus the decoded image into uint8 pixels: ``pillow`` (the reference, in
DataLoader workers) and ``torch`` (batched on any device, byte for byte Pillow's); ``render`` holds
the renderer interface, its registry and the one driver every stage calls. Both stages call the
same functions, so the student sees the pixels the teacher saw.
"""
from .params import (Box, MixParams, ViewParams, batch_mixes, erase_noise, group_partners, mix_lambda, mix_params,
                     pairs_for_view, pixel_box, store_order, view_params)
from .pillow import decode_image, mix_batch, mix_pixels, render_view
from .recipe import (AFFINE_INTERPOLATIONS, GEOMETRIC_OPS, INTERPOLATIONS, RECIPE_VERSION, RECIPES, Recipe,
                     create_recipe)

# The renderers and their driver need torch; parameters, recipes and the Pillow reference do not. They
# load on first use, so what only draws parameters (label statistics, the CLI) never imports torch.
_RENDER = ("RENDERER_CHOICES", "PillowRenderer", "Renderer", "TorchRenderer", "ViewRenderer", "create_renderer",
           "finish_batch", "plan_batch", "prefetch_on_device", "register_renderer", "render_now", "resolve_renderer")


def __getattr__(name: str):
    if name in _RENDER:
        from . import render

        value = getattr(render, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'relabel.views' has no attribute {name!r}")

__all__ = ["Box", "MixParams", "ViewParams", "batch_mixes", "erase_noise", "group_partners", "mix_lambda",
           "mix_params", "pairs_for_view", "pixel_box", "store_order", "view_params", "decode_image", "mix_batch",
           "mix_pixels", "render_view", "AFFINE_INTERPOLATIONS", "GEOMETRIC_OPS", "INTERPOLATIONS", "RECIPE_VERSION",
           "RECIPES", "Recipe", "create_recipe", "RENDERER_CHOICES", "PillowRenderer", "Renderer", "TorchRenderer",
           "ViewRenderer", "create_renderer", "finish_batch", "plan_batch", "prefetch_on_device", "register_renderer", "render_now",
           "resolve_renderer"]
