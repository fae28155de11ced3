"""The model a replica serves: from an MLflow model URI (models:/NAME@ALIAS, models:/NAME/VERSION,
models:/m-ID) or a checkpoint folder, every digest verified before anything is loaded."""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path

from infra.registry import fetch_checkpoint
from infra.settings import Settings
from model.checkpoint import CheckpointError, checkpoint_digest, load_checkpoint
from model.tokenizer import Tokenizer
from model.transformer import Transformer

log = logging.getLogger("longmix.serve")


@dataclass
class ServedModel:
    name: str  # the id clients send as "model"
    source: str  # what it was loaded from
    digest: str  # sha256 of the checkpoint's digest.json (longmix.digest)
    model: Transformer
    tokenizer: Tokenizer
    created: int  # unix time it was loaded
    approved: bool  # its files hash to the approved digest it was given; False: --unapproved

    @property
    def context(self) -> int:
        return self.model.cfg.max_seq_len


def registered_name(uri: str) -> str:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> NAME; models:/m-ID -> m-ID."""
    return re.split(r"[@/]", uri.removeprefix("models:/"), maxsplit=1)[0]


def model_name(source: str, settings: Settings) -> str:
    """The id clients send as "model": the setting, else the registered name or folder name."""
    if settings.serve_model_name:
        return settings.serve_model_name
    return registered_name(source) if source.startswith("models:/") else Path(source).name


def load_served_model(source: str, settings: Settings, pinned: str | None = None) -> ServedModel:
    """`pinned`: the approved digest; the files must hash to it (a registry tag can be rewritten
    after other files are uploaded, the deployment record's digest cannot)."""
    folder = fetch_checkpoint(source, settings.tracking_uri, settings.home / "serve" / "models",
                              expected_digest=pinned)
    digest = checkpoint_digest(folder)  # every file against digest.json, before loading
    verify_pinned(source, digest, pinned)
    if pinned is None:
        log.warning("serving %s (digest %s) UNAPPROVED: no approved digest was given, for "
                    "development only", source, digest[:12])
    model, tokenizer = load_checkpoint(folder)
    return ServedModel(model_name(source, settings), source, digest, model.eval(), tokenizer,
                       int(time.time()), approved=pinned is not None)


def verify_pinned(source: str, digest: str, pinned: str | None) -> None:
    if pinned is not None and digest != pinned:
        raise CheckpointError(f"{source}: its files hash to {digest[:12]}…, not the approved "
                              f"{pinned[:12]}…: refusing to serve them")
