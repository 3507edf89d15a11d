"""Natural-image sources by name, for users with internet: ``hf:ORG/NAME`` and ``timm:NAME``.

``hf:facebook/vit-mae-base`` is a Hugging Face ViT-MAE repository (encoder and decoder);
``timm:vit_base_patch16_224.mae`` is a timm model's weights on the hub (``timm/NAME``,
encoder only). Files come through ``huggingface_hub``: fetched once into its cache
(``HF_HUB_CACHE``, default ``~/.cache/huggingface/hub``) and read from there after; with
``HF_HUB_OFFLINE=1`` only the cache is read, and a missing model is a one-line error
naming the cache folder to fill.
"""

from __future__ import annotations

from pathlib import Path

from cspt.errors import CsptError

#: name prefix -> the hub namespace its repositories live in ("" for full ``ORG/NAME`` ids)
HUB_PREFIXES = {"hf:": "", "timm:": "timm/"}
#: weights files, best first
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")


def is_hub_name(value: str | Path | None) -> bool:
    """Whether ``value`` names a hub model (``hf:ORG/NAME`` or ``timm:NAME``) rather than a file."""
    return isinstance(value, (str, Path)) and str(value).startswith(tuple(HUB_PREFIXES))


def hub_repo(name: str) -> str:
    """The hub repository of ``hf:ORG/NAME`` or ``timm:NAME``."""
    prefix = next(p for p in HUB_PREFIXES if name.startswith(p))
    repo = name[len(prefix):].strip("/")
    if not repo:
        raise CsptError(f"{name}: no repository after {prefix!r} (e.g. hf:facebook/vit-mae-base)")
    return HUB_PREFIXES[prefix] + repo


def hub_weights(name: str) -> Path:
    """The local weights file of a hub model (``config.json`` and any ``preprocessor_config.json`` beside it),
    fetched into the cache if needed."""
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    repo = hub_repo(name)
    cache = Path(constants.HF_HUB_CACHE) / f"models--{repo.replace('/', '--')}"
    try:
        hf_hub_download(repo, "config.json")
        try:  # where Hugging Face models keep their normalisation (image_mean, image_std)
            hf_hub_download(repo, "preprocessor_config.json")
        except (EntryNotFoundError, LocalEntryNotFoundError):
            pass
        for weights in WEIGHTS_FILES:
            try:
                return Path(hf_hub_download(repo, weights))
            except (EntryNotFoundError, LocalEntryNotFoundError):
                continue
    except LocalEntryNotFoundError:
        raise CsptError(f"{name}: not in the Hugging Face cache and the hub cannot be reached; fill {cache} "
                        f"(`hf download {repo}` where there is internet, then copy it), or set HF_HUB_CACHE") from None
    except (HfHubHTTPError, OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CsptError(f"{name}: cannot fetch {repo} from the Hugging Face hub ({first})") from None
    raise CsptError(f"{name}: {cache} holds none of {', '.join(WEIGHTS_FILES)}")
