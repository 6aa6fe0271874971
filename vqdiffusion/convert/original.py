"""Import the authors' original checkpoints (microsoft/VQ-Diffusion, ``.pth``).

Supported layouts:

* transformer: ``Text2ImageTransformer`` (ITHQ, COCO, CUB-200, Oxford-102), stored under
  ``checkpoint["model"]`` with the EMA copy under ``checkpoint["ema"]`` (used by default, as the
  original inference code does);
* tokenizer: ``PatchVQGAN`` / the EMA ``PatchVQVAE`` of ITHQ (``checkpoint["model"]``), and
  taming VQGANs of the same layout (``quantize.embedding.weight``). The COCO/CUB models index
  only the 2887 codes their VQGAN used, through a code-mapping file: that mapping is not
  imported yet, so those transformers load but need their tokenizer's mapping to decode.

Key mapping (original -> ours; ours equals diffusers'). Transformer, prefix ``transformer.transformer.``:

====================================  ==========================================
``content_emb.{emb,height_emb,width_emb}``   ``latent_image_embedding.{...}``
``blocks.i.ln1.{emb,linear}``               ``transformer_blocks.i.norm1.{emb,linear}``
``blocks.i.attn1.{query,key,value,proj}``   ``transformer_blocks.i.attn1.{to_q,to_k,to_v,to_out.0}``
``blocks.i.ln1_1``                          ``transformer_blocks.i.norm2``
``blocks.i.attn2.{query,key,value,proj}``   ``transformer_blocks.i.attn2.{to_q,to_k,to_v,to_out.0}``
``blocks.i.ln2``                            ``transformer_blocks.i.norm3``
``blocks.i.mlp.{0,2}``                      ``transformer_blocks.i.ff.net.{0.proj,2}``
``to_logits.{0,1}``                         ``norm_out``, ``out``
``transformer.empty_text_embed``            the learned null embedding (77 x 512)
====================================  ==========================================

VQ-VAE: ``encoder.down.i.block.j`` -> ``encoder.down_blocks.i.resnets.j`` (``nin_shortcut`` ->
``conv_shortcut``), ``encoder.down.i.attn.j.{norm,q,k,v,proj_out}`` (1x1 convs) ->
``...attentions.j.{group_norm,to_q,to_k,to_v,to_out.0}`` (linear), ``down.i.downsample.conv`` ->
``down_blocks.i.downsamplers.0.conv``, ``mid.block_1/attn_1/block_2`` -> ``mid_block.resnets.0 /
attentions.0 / resnets.1``, ``norm_out`` -> ``conv_norm_out``; the decoder's ``up.i`` are stored
lowest resolution last, so ``decoder.up.i`` -> ``decoder.up_blocks.(n-1-i)``;
``quantize.embedding`` (a tensor) -> ``quantize.embedding.weight``.

The original ImageNet (``Condition2ImageTransformer``) and FFHQ (``UnCondition2ImageTransformer``)
checkpoints are not mapped: their download links are dead and their layout cannot be checked.
"""

from __future__ import annotations

import argparse
import pickle
import re
from pathlib import Path

import torch

from ..diffusion.schedule import NoiseSchedule
from ..models.conditioning import LearnedNullEmbedding, TextEncoder
from ..models.transformer import TransformerConfig, VQDiffusionTransformer
from ..models.vqvae import VQVAE, VQVAEConfig
from .diffusers_format import save_pipeline
from .model_card import write_model_card
from .state_dict import load_checked

__all__ = [
    "transformer_from_original",
    "vqvae_from_original",
    "original_components",
]

TRANSFORMER_PREFIX = "transformer.transformer."
NULL_EMBEDDING_KEY = "transformer.empty_text_embed"

_TRANSFORMER_RULES = [
    (r"content_emb\.(emb|height_emb|width_emb)\.", r"latent_image_embedding.\1."),
    (r"blocks\.(\d+)\.ln1\.", r"transformer_blocks.\1.norm1."),
    (r"blocks\.(\d+)\.ln1_1\.", r"transformer_blocks.\1.norm2."),
    (r"blocks\.(\d+)\.ln2\.", r"transformer_blocks.\1.norm3."),
    (r"blocks\.(\d+)\.(attn[12])\.query\.", r"transformer_blocks.\1.\2.to_q."),
    (r"blocks\.(\d+)\.(attn[12])\.key\.", r"transformer_blocks.\1.\2.to_k."),
    (r"blocks\.(\d+)\.(attn[12])\.value\.", r"transformer_blocks.\1.\2.to_v."),
    (r"blocks\.(\d+)\.(attn[12])\.proj\.", r"transformer_blocks.\1.\2.to_out.0."),
    (r"blocks\.(\d+)\.mlp\.0\.", r"transformer_blocks.\1.ff.net.0.proj."),
    (r"blocks\.(\d+)\.mlp\.2\.", r"transformer_blocks.\1.ff.net.2."),
    (r"to_logits\.0\.", "norm_out."),
    (r"to_logits\.1\.", "out."),
]


def _rename(key: str, rules: list[tuple[str, str]]) -> str | None:
    for pattern, replacement in rules:
        new, count = re.subn("^" + pattern, replacement, key)
        if count:
            return new
    return None


def _model_state(checkpoint: dict, use_ema: bool) -> dict[str, torch.Tensor]:
    """The flat state of an original checkpoint, with EMA transformer weights swapped in."""
    if "model" not in checkpoint:
        raise ValueError(f"not an original VQ-Diffusion checkpoint: no 'model' entry (keys: {sorted(checkpoint)[:5]})")
    state = dict(checkpoint["model"])
    if use_ema and "ema" in checkpoint:
        # EMA keys are relative to the DiffusionTransformer's `transformer` attribute.
        state.update({f"transformer.{k}": v for k, v in checkpoint["ema"].items()})
    return state


def transformer_from_original(
    checkpoint: dict, num_heads: int = 16, use_ema: bool = True
) -> tuple[VQDiffusionTransformer, LearnedNullEmbedding | None]:
    """(transformer, learned null embedding or None) from an original ``Text2ImageTransformer``.

    The number of heads is not recorded in the weights: 16 for every published model.
    """
    state = _model_state(checkpoint, use_ema)
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith(TRANSFORMER_PREFIX):
            new = _rename(key[len(TRANSFORMER_PREFIX):], _TRANSFORMER_RULES)
            if new is not None:
                ours[new] = value.float()
    if "latent_image_embedding.emb.weight" not in ours:
        raise ValueError("no Text2ImageTransformer weights found (expected keys under 'transformer.transformer.')")
    classes, width = ours["latent_image_embedding.emb.weight"].shape
    num_layers = len({k.split(".")[1] for k in ours if k.startswith("transformer_blocks.")})
    if width % num_heads:
        raise ValueError(f"width {width} is not divisible by num_heads={num_heads}")
    config = TransformerConfig(
        num_embeds=classes - 1,
        height=ours["latent_image_embedding.height_emb.weight"].shape[0],
        width=ours["latent_image_embedding.width_emb.weight"].shape[0],
        num_layers=num_layers,
        num_heads=num_heads,
        head_dim=width // num_heads,
        context_dim=ours["transformer_blocks.0.attn2.to_k.weight"].shape[1],
        num_timesteps=ours["transformer_blocks.0.norm1.emb.weight"].shape[0],
        activation="geglu-approximate",
        mlp_ratio=ours["transformer_blocks.0.ff.net.0.proj.weight"].shape[0] // width,
    )
    transformer = load_checked(VQDiffusionTransformer(config), ours, "original transformer")
    null = None
    if NULL_EMBEDDING_KEY in state:
        embedding = state[NULL_EMBEDDING_KEY].float()
        embedding = embedding.reshape(-1, embedding.shape[-1])  # stored (1, 77, 512) or (77, 512)
        null = LearnedNullEmbedding(*embedding.shape)
        null.embeddings.data.copy_(embedding)
    return transformer.eval(), null


def _vqvae_rules(num_up_blocks: int) -> list[tuple[str, object]]:
    up = lambda m: f"decoder.up_blocks.{num_up_blocks - 1 - int(m.group(1))}."  # noqa: E731
    return [
        (r"encoder\.down\.(\d+)\.block\.", r"encoder.down_blocks.\1.resnets."),
        (r"encoder\.down\.(\d+)\.attn\.", r"encoder.down_blocks.\1.attentions."),
        (r"encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
        (r"decoder\.up\.(\d+)\.", up),
        (r"(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
        (r"(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
        (r"(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
        (r"(encoder|decoder)\.norm_out\.", r"\1.conv_norm_out."),
    ]


_LEAF_RENAMES = [
    (".nin_shortcut.", ".conv_shortcut."),
    (".upsample.", ".upsamplers.0."),
    (".block.", ".resnets."),
    (".attn.", ".attentions."),
    (".norm.", ".group_norm."),
    (".q.", ".to_q."),
    (".k.", ".to_k."),
    (".v.", ".to_v."),
    (".proj_out.", ".to_out.0."),
]


def vqvae_from_original(checkpoint: dict) -> VQVAE:
    """Our VQVAE from an original ``PatchVQGAN`` / ``PatchVQVAE`` checkpoint (config read off shapes)."""
    state = dict(checkpoint.get("model", checkpoint))
    if "quantize.embedding.weight" in state:  # taming's VQGAN keeps an nn.Embedding
        state["quantize.embedding"] = state.pop("quantize.embedding.weight")
    down = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.down.")})
    if not down or "quantize.embedding" not in state:
        raise ValueError("not an original PatchVQGAN checkpoint (expected 'encoder.down.*' and 'quantize.embedding')")
    rules = _vqvae_rules(len(down))
    ours: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "quantize.embedding":
            ours["quantize.embedding.weight"] = value.float()
            continue
        if not key.startswith(("encoder.", "decoder.", "quant_conv.", "post_quant_conv.")):
            continue  # losses, discriminator, EMA statistics
        new = key
        for pattern, replacement in rules:
            new = re.sub("^" + pattern, replacement, new)
        for old, repl in _LEAF_RENAMES:
            new = new.replace(old, repl)
        if ".attentions." in new and value.dim() == 4:
            value = value[:, :, 0, 0]  # 1x1 convolutions -> linear layers
        ours[new] = value.float()
    resnets = {int(k.split(".")[4]) for k in ours if k.startswith("encoder.down_blocks.0.resnets.")}
    config = VQVAEConfig(
        down_block_types=tuple(
            "AttnDownEncoderBlock2D" if any(k.startswith(f"encoder.down_blocks.{i}.attentions.") for k in ours)
            else "DownEncoderBlock2D" for i in down),
        up_block_types=tuple(
            "AttnUpDecoderBlock2D" if any(k.startswith(f"decoder.up_blocks.{i}.attentions.") for k in ours)
            else "UpDecoderBlock2D" for i in range(len(down))),
        block_out_channels=tuple(ours[f"encoder.down_blocks.{i}.resnets.0.conv2.weight"].shape[0] for i in down),
        layers_per_block=len(resnets),
        latent_channels=ours["encoder.conv_out.weight"].shape[0],
        num_vq_embeddings=ours["quantize.embedding.weight"].shape[0],
        vq_embed_dim=ours["quantize.embedding.weight"].shape[1],
    )
    return load_checked(VQVAE(config), ours, "original VQ-VAE").eval()


def load_original(path: str | Path, trust_pickle: bool = False) -> dict:
    """An original ``.pth`` file, read as data (tensors and plain containers) only.

    A ``.pth`` is a pickle, and unpickling may run any code the file names. Files that hold more
    than data are refused unless ``trust_pickle`` (``--trust-pickle``) says the file comes from a
    source you trust."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if not trust_pickle:
            raise ValueError(
                f"{path} holds more than tensors and plain containers ({str(error).splitlines()[0]}); loading it "
                f"would run code named in the file. Only if you trust its source, pass trust_pickle=True "
                f"(--trust-pickle)") from None
    return torch.load(path, map_location="cpu", weights_only=False)


def original_components(
    transformer_checkpoint: str | Path,
    vqvae_checkpoint: str | Path,
    text_encoder: str = "openai/clip-vit-base-patch32",
    num_heads: int = 16,
    use_ema: bool = True,
    trust_pickle: bool = False,
) -> dict:
    """Components for ``VQDiffusionPipeline(**components)`` from the two original ``.pth`` files
    and a CLIP text model (``trust_pickle``: see :func:`load_original`)."""
    transformer, null = transformer_from_original(load_original(transformer_checkpoint, trust_pickle), num_heads,
                                                  use_ema)
    vqvae = vqvae_from_original(load_original(vqvae_checkpoint, trust_pickle))
    encoder = TextEncoder.from_pretrained(text_encoder)
    schedule = NoiseSchedule(transformer.config.num_embeds)  # all published models: the released preset
    return {"vqvae": vqvae, "transformer": transformer, "schedule": schedule, "text_encoder": encoder,
            "null_embedding": null}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Convert original VQ-Diffusion checkpoints to a diffusers folder")
    parser.add_argument("--checkpoint", required=True, help="transformer .pth (e.g. ithq_learnable.pth)")
    parser.add_argument("--vqvae", required=True, help="tokenizer .pth (e.g. ithq_vqvae.pth)")
    parser.add_argument("--text-encoder", default="openai/clip-vit-base-patch32", help="hub id or local folder")
    parser.add_argument("--num-heads", type=int, default=16)
    parser.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA copy")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load .pth files holding more than tensors (runs code they name: trusted sources only)")
    parser.add_argument("--out", required=True, help="output folder (diffusers format)")
    args = parser.parse_args(argv)
    save_pipeline(args.out, **original_components(args.checkpoint, args.vqvae, args.text_encoder, args.num_heads,
                                                  not args.no_ema, args.trust_pickle))
    write_model_card(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
