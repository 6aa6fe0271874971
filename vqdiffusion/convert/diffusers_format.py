"""Read and write diffusers-format VQ-Diffusion folders.

Layout (``model_index.json`` + one sub-folder per component)::

    vqvae/            VQModel: config.json + diffusion_pytorch_model.safetensors
    transformer/      Transformer2DModel (discrete): config.json + weights
    text_encoder/     transformers CLIPTextModel (any transformers text model is accepted)
    tokenizer/        transformers tokenizer files
    scheduler/        scheduler_config.json (VQDiffusionScheduler)
    learned_classifier_free_sampling_embeddings/  config.json (+ weights when learnable)

Parameter names of our modules equal diffusers', so weights map one to one. Models diffusers'
classes cannot express (class-conditional transformers) are written in the same layout with
``"_class_name": "VQDiffusionTransformer"`` and our own config fields. Each component is
read from its own folder, never through ``model_index.json``'s class names: diffusers 0.42 can no
longer resolve the deprecated ``LearnedClassifierFreeSamplingEmbeddings`` class named there, so
it cannot load these folders itself, while this loader does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..diffusion.schedule import NoiseSchedule, ScheduleConfig
from ..models.conditioning import LearnedNullEmbedding, TextEncoder
from ..models.transformer import TransformerConfig, VQDiffusionTransformer
from ..models.vqvae import VQVAE, VQVAEConfig
from ..version import __version__
from .state_dict import load_checked

__all__ = ["load_pipeline_components", "save_pipeline", "resolve_folder", "diffusers_pipeline", "DIFFUSERS_VERSION"]

DIFFUSERS_VERSION = "0.42.1"  # written into configs; the format has not changed since 0.10
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
NULL_EMBEDDING_FOLDER = "learned_classifier_free_sampling_embeddings"
REQUIRED = ("vqvae", "transformer", "scheduler")


def resolve_folder(path_or_repo_id: str | os.PathLike) -> Path:
    """A local folder as is; otherwise a hub id, downloaded (needs ``huggingface_hub`` + network)."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        return path
    if path.exists() or str(path_or_repo_id).count("/") != 1:
        raise FileNotFoundError(
            f"{path_or_repo_id!r} is neither a pipeline folder nor a hub id of the form 'owner/name'"
        )
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(path_or_repo_id)))
    except Exception as error:  # offline, unknown repo, no huggingface_hub: say which and why
        raise FileNotFoundError(
            f"could not find a local folder {str(path)!r} nor download hub id {str(path_or_repo_id)!r}: {error}"
        ) from error


def read_json(path: Path) -> dict:
    with open(path) as f:
        return json.load(f)


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        if (folder / name).exists():
            if name.endswith(".safetensors"):
                return load_file(folder / name)
            return torch.load(folder / name, map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no weights in {folder}: expected one of {WEIGHT_FILES}")


OWN_TRANSFORMER_CLASS = "VQDiffusionTransformer"


def transformer_config_from_folder(config: dict) -> TransformerConfig:
    """Our own class (any variant) or diffusers' discrete Transformer2DModel."""
    if config.get("_class_name") == OWN_TRANSFORMER_CLASS:
        fields = {k: v for k, v in config.items() if not k.startswith("_")}
        return TransformerConfig(**fields)
    return transformer_config_from_diffusers(config)


def transformer_config_to_folder(config: TransformerConfig) -> dict:
    """diffusers' Transformer2DModel config where it can express the model, ours otherwise
    (class-conditional or non-square models, or a feed-forward width other than 4x, which
    diffusers' class cannot hold)."""
    if config.height == config.width and config.num_classes is None and not config.extra and config.mlp_ratio == 4:
        return transformer_config_to_diffusers(config)
    data = config.to_dict()
    data.pop("gradient_checkpointing")
    return {"_class_name": OWN_TRANSFORMER_CLASS, "_vqdiffusion_version": __version__, **data}


def transformer_config_from_diffusers(config: dict) -> TransformerConfig:
    unsupported = {
        "only_cross_attention": False, "double_self_attention": False, "upcast_attention": False,
        "norm_elementwise_affine": True, "patch_size": None, "in_channels": None,
    }
    for key, expected in unsupported.items():
        if config.get(key, expected) != expected:
            raise ValueError(f"transformer config {key}={config[key]!r} is not supported (expected {expected!r})")
    if config.get("num_vector_embeds") is None or config.get("num_embeds_ada_norm") is None:
        raise ValueError("transformer config is not a discrete VQ-Diffusion Transformer2DModel "
                         "(needs num_vector_embeds and num_embeds_ada_norm)")
    size = config["sample_size"]
    return TransformerConfig(
        num_embeds=config["num_vector_embeds"] - 1,
        height=size,
        width=size,
        num_layers=config.get("num_layers", 1),
        num_heads=config.get("num_attention_heads", 16),
        head_dim=config.get("attention_head_dim", 88),
        context_dim=config.get("cross_attention_dim"),
        num_timesteps=config["num_embeds_ada_norm"],
        activation=config.get("activation_fn", "geglu"),
        attention_bias=config.get("attention_bias", False),
        dropout=config.get("dropout", 0.0),
    )


def transformer_config_to_diffusers(config: TransformerConfig) -> dict:
    if config.height != config.width or config.num_classes is not None:
        raise ValueError("diffusers' Transformer2DModel holds only square, text- or un-conditional models")
    return {
        "_class_name": "Transformer2DModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "num_vector_embeds": config.num_embeds + 1,
        "sample_size": config.height,
        "num_layers": config.num_layers,
        "num_attention_heads": config.num_heads,
        "attention_head_dim": config.head_dim,
        "cross_attention_dim": config.context_dim,
        "num_embeds_ada_norm": config.num_timesteps,
        "activation_fn": config.activation,
        "attention_bias": config.attention_bias,
        "dropout": config.dropout,
        "norm_type": "ada_norm",
    }


VQMODEL_KEYS = (
    "in_channels", "out_channels", "down_block_types", "up_block_types", "block_out_channels",
    "layers_per_block", "act_fn", "latent_channels", "sample_size", "num_vq_embeddings",
    "norm_num_groups", "vq_embed_dim", "mid_block_add_attention",
)


def vqvae_config_from_diffusers(config: dict) -> VQVAEConfig:
    if config.get("norm_type", "group") != "group":
        raise ValueError(f"VQModel norm_type={config['norm_type']!r} (MoVQ) is not supported; expected 'group'")
    return VQVAEConfig(**{key: config[key] for key in VQMODEL_KEYS if key in config})


def vqvae_config_to_diffusers(config: VQVAEConfig) -> dict:
    data = config.to_dict()
    out = {"_class_name": "VQModel", "_diffusers_version": DIFFUSERS_VERSION}
    out.update({key: data[key] for key in VQMODEL_KEYS})
    out.update(norm_type="group", scaling_factor=0.18215, lookup_from_codebook=False, force_upcast=False)
    return out


def schedule_config_from_diffusers(config: dict) -> tuple[int, ScheduleConfig]:
    defaults = ScheduleConfig()
    return config["num_vec_classes"] - 1, ScheduleConfig(
        num_timesteps=config.get("num_train_timesteps", defaults.num_timesteps),
        alpha_cum_start=config.get("alpha_cum_start", defaults.alpha_cum_start),
        alpha_cum_end=config.get("alpha_cum_end", defaults.alpha_cum_end),
        gamma_cum_start=config.get("gamma_cum_start", defaults.gamma_cum_start),
        gamma_cum_end=config.get("gamma_cum_end", defaults.gamma_cum_end),
    )


def load_pipeline_components(path_or_repo_id: str | os.PathLike) -> dict:
    """Components for ``VQDiffusionPipeline(**components)`` from a diffusers-format folder."""
    root = resolve_folder(path_or_repo_id)
    missing = [name for name in REQUIRED if not (root / name).is_dir()]
    if missing:
        raise FileNotFoundError(f"{root} is missing component folder(s) {missing}; a VQ-Diffusion folder "
                                f"holds {list(REQUIRED) + ['text_encoder', 'tokenizer', NULL_EMBEDDING_FOLDER]}")

    vq_config = vqvae_config_from_diffusers(read_json(root / "vqvae" / "config.json"))
    vqvae = load_checked(VQVAE(vq_config), load_weights(root / "vqvae"), "vqvae")

    tf_config = transformer_config_from_folder(read_json(root / "transformer" / "config.json"))
    transformer = load_checked(VQDiffusionTransformer(tf_config), load_weights(root / "transformer"), "transformer")

    num_codes, schedule_config = schedule_config_from_diffusers(
        read_json(root / "scheduler" / "scheduler_config.json"))
    schedule = NoiseSchedule(num_codes, schedule_config)

    text_encoder = null_embedding = None
    if tf_config.context_dim is not None:
        for name in ("text_encoder", "tokenizer"):
            if not (root / name).is_dir():
                raise FileNotFoundError(f"{root} is missing component folder {name!r} needed by a text model")
        text_encoder = TextEncoder.from_pretrained(root / "text_encoder", root / "tokenizer")
        if (root / NULL_EMBEDDING_FOLDER).is_dir():
            null_embedding = _load_null_embedding(root / NULL_EMBEDDING_FOLDER)
    return dict(vqvae=vqvae.eval(), transformer=transformer.eval(), schedule=schedule,
                text_encoder=text_encoder, null_embedding=null_embedding)


def _load_null_embedding(folder: Path) -> LearnedNullEmbedding:
    config = read_json(folder / "config.json")
    if not config.get("learnable", False):
        return LearnedNullEmbedding(learnable=False)
    module = LearnedNullEmbedding(config["length"], config["hidden_size"])
    return load_checked(module, load_weights(folder), NULL_EMBEDDING_FOLDER)


def save_module(module: torch.nn.Module, config: dict, folder: Path, config_name: str = "config.json") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / config_name).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    if not state:  # diffusers stores an unlearned null embedding as an empty tensor
        state = {"embeddings": torch.zeros(0)}
    save_file(state, folder / WEIGHT_FILES[0])


def save_pipeline(directory: str | os.PathLike, vqvae: VQVAE, transformer: VQDiffusionTransformer,
                  schedule: NoiseSchedule, text_encoder: TextEncoder | None = None,
                  null_embedding: LearnedNullEmbedding | None = None) -> None:
    """Write a pipeline's components (``pipe.components``) as a diffusers-format folder
    (written to a temporary name, then renamed)."""
    from ..utils.atomic import atomic_directory

    with atomic_directory(directory) as root:
        save_module(vqvae, vqvae_config_to_diffusers(vqvae.config), root / "vqvae")
        save_module(transformer, transformer_config_to_folder(transformer.config), root / "transformer")
        settings = schedule.config
        scheduler = {
            "_class_name": "VQDiffusionScheduler", "_diffusers_version": DIFFUSERS_VERSION,
            "num_vec_classes": schedule.num_codes + 1, "num_train_timesteps": settings.num_timesteps,
            "alpha_cum_start": settings.alpha_cum_start, "alpha_cum_end": settings.alpha_cum_end,
            "gamma_cum_start": settings.gamma_cum_start, "gamma_cum_end": settings.gamma_cum_end,
        }
        (root / "scheduler").mkdir()
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2) + "\n")
        transformer_class = json.loads((root / "transformer" / "config.json").read_text())["_class_name"]
        index = {
            "_class_name": "VQDiffusionPipeline", "_diffusers_version": DIFFUSERS_VERSION,
            "vqvae": ["diffusers", "VQModel"],
            "transformer": ["diffusers" if transformer_class != OWN_TRANSFORMER_CLASS else "vqdiffusion",
                            transformer_class],
            "scheduler": ["diffusers", "VQDiffusionScheduler"],
        }
        if text_encoder is not None:
            text_encoder.model.save_pretrained(root / "text_encoder")
            text_encoder.tokenizer.save_pretrained(root / "tokenizer")
            index["text_encoder"] = ["transformers", type(text_encoder.model).__name__]
            index["tokenizer"] = ["transformers", type(text_encoder.tokenizer).__name__]
            null = null_embedding or LearnedNullEmbedding(learnable=False)
            shape = null.embeddings.shape if null.learnable else (None, None)
            save_module(null, {
                "_class_name": "LearnedClassifierFreeSamplingEmbeddings", "_diffusers_version": DIFFUSERS_VERSION,
                "learnable": null.learnable, "length": shape[0], "hidden_size": shape[1],
            }, root / NULL_EMBEDDING_FOLDER)
            index[NULL_EMBEDDING_FOLDER] = ["vq_diffusion", "LearnedClassifierFreeSamplingEmbeddings"]
        (root / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def diffusers_pipeline(path_or_repo_id: str | os.PathLike):
    """diffusers' own ``VQDiffusionPipeline`` from a folder of this layout, each component read
    with its diffusers / transformers class.

    ``diffusers.DiffusionPipeline.from_pretrained(folder)`` cannot do this since diffusers 0.40:
    the null-embedding class is no longer exported (folders diffusers saves name it under
    ``diffusers``, the hub's under ``vq_diffusion``), and passing the component in does not
    help, as ``model_index.json`` is checked first. Only text models exist there.
    """
    from diffusers import Transformer2DModel, VQDiffusionPipeline, VQDiffusionScheduler, VQModel
    from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion import (
        LearnedClassifierFreeSamplingEmbeddings,
    )
    from transformers import AutoModel, AutoTokenizer

    root = resolve_folder(path_or_repo_id)
    if read_json(root / "transformer" / "config.json").get("_class_name") == OWN_TRANSFORMER_CLASS:
        raise ValueError(f"{root} holds a model diffusers' Transformer2DModel cannot express (class-conditional, "
                         "non-square or another feed-forward width): load it with vqdiffusion.VQDiffusionPipeline")
    return VQDiffusionPipeline(
        vqvae=VQModel.from_pretrained(root / "vqvae"),
        transformer=Transformer2DModel.from_pretrained(root / "transformer"),
        text_encoder=AutoModel.from_pretrained(root / "text_encoder", trust_remote_code=False),
        tokenizer=AutoTokenizer.from_pretrained(root / "tokenizer", trust_remote_code=False),
        scheduler=VQDiffusionScheduler.from_pretrained(root / "scheduler"),
        learned_classifier_free_sampling_embeddings=LearnedClassifierFreeSamplingEmbeddings.from_pretrained(
            root / NULL_EMBEDDING_FOLDER),
    )
