"""How far bf16 autocast training moves the loss and gradients from float32, with the residual
stream in float32 (autocast's default) and in bf16 (``residual_in_autocast_dtype``).

    python bench/residual_precision.py --size ithq --batch 4

Same random-initialised transformer, same tokens, text, timesteps and noise for all three; each
mixed-precision gradient is compared with the float32 one: relative loss difference, cosine of
the whole gradient vector, its relative error ||g - g32|| / ||g32||, and the worst cosine of any
one parameter tensor. On a GPU at the paper sizes; runs on the CPU too (slowly).
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from flops import SIZES  # bench/flops.py

from vqdiffusion.diffusion.loss import DiffusionLoss
from vqdiffusion.diffusion.schedule import NoiseSchedule, model_timestep
from vqdiffusion.models import TransformerConfig, VQDiffusionTransformer


def loss_and_gradients(model, loss_fn, x0, context, autocast: bool, bf16_residual: bool):
    """The loss and a float32 copy of every parameter's gradient for one fixed draw."""
    model.zero_grad(set_to_none=True)
    model.residual_in_autocast_dtype = bf16_residual
    device = x0.device.type
    torch.manual_seed(1)  # the loss's draws of t and x_t: the same for every setting
    with torch.autocast(device, dtype=torch.bfloat16, enabled=autocast):
        loss = loss_fn(lambda x_t, t: model(x_t, model_timestep(t), context=context, return_logits=True), x0)["loss"]
    loss.backward()
    return loss.item(), {name: p.grad.float().clone() for name, p in model.named_parameters()}


def compare(reference, other) -> dict:
    (loss_ref, grads_ref), (loss, grads) = reference, other
    flat_ref = torch.cat([g.flatten() for g in grads_ref.values()])
    flat = torch.cat([grads[name].flatten() for name in grads_ref])
    # a key bias shifts every score of a query alike, so softmax cancels it: its true gradient is 0
    # and what float32 computes there is rounding noise, not a reference
    per_tensor = {name: torch.nn.functional.cosine_similarity(grads[name].flatten(), g.flatten(), dim=0).item()
                  for name, g in grads_ref.items() if not name.endswith("to_k.bias")}
    worst = min(per_tensor, key=per_tensor.get)
    return {"loss": loss, "loss_rel_diff": abs(loss - loss_ref) / abs(loss_ref),
            "grad_cosine": torch.nn.functional.cosine_similarity(flat, flat_ref, dim=0).item(),
            "grad_rel_error": ((flat - flat_ref).norm() / flat_ref.norm()).item(),
            "worst_tensor": worst, "worst_tensor_cosine": per_tensor[worst]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="ithq")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    layers, heads, head_dim, codes, ctx_dim, ctx_len = SIZES[args.size]
    torch.manual_seed(0)
    model = VQDiffusionTransformer(TransformerConfig(
        num_embeds=codes, num_layers=layers, num_heads=heads, head_dim=head_dim, context_dim=ctx_dim)).to(device)
    model.train()
    loss_fn = DiffusionLoss(NoiseSchedule(codes)).to(device)
    x0 = torch.randint(0, codes, (args.batch, 1024), device=device)
    context = torch.randn(args.batch, ctx_len, ctx_dim, device=device)
    reference = loss_and_gradients(model, loss_fn, x0, context, autocast=False, bf16_residual=False)
    rows = {}
    for name, bf16_residual in (("bf16 autocast, float32 residual", False), ("bf16 autocast, bf16 residual", True)):
        rows[name] = compare(reference, loss_and_gradients(model, loss_fn, x0, context, True, bf16_residual))
        r = rows[name]
        print(f"{name:34s} loss {r['loss']:.5f} (rel diff {r['loss_rel_diff']:.2e}), gradient cosine "
              f"{r['grad_cosine']:.6f}, rel error {r['grad_rel_error']:.4f}, worst tensor "
              f"{r['worst_tensor']} cosine {r['worst_tensor_cosine']:.4f}", flush=True)
    print(f"float32 loss {reference[0]:.5f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
                       "torch": torch.__version__, "date": time.strftime("%Y-%m-%d"), "size": args.size,
                       "batch": args.batch, "float32_loss": reference[0], "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
