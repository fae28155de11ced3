"""Checkpoints: model.safetensors + config.json + tokenizer.json + digest.json (sha256 of each
file). Loading verifies every digest first and never unpickles anything."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.config import ModelConfig
from model.tokenizer import Tokenizer
from model.transformer import Transformer

FORMAT_VERSION = 1
WEIGHTS, CONFIG, TOKENIZER, DIGEST = "model.safetensors", "config.json", "tokenizer.json", "digest.json"
REQUIRED = (WEIGHTS, CONFIG, TOKENIZER)


class CheckpointError(ValueError):
    """A checkpoint is missing a file, or a file does not match its recorded digest."""


@dataclass(frozen=True)
class DigestRecord:
    """Contract 3's digest.json: the sha256 of every other file of the checkpoint folder."""

    format_version: int
    files: dict[str, str]  # path relative to the folder -> sha256


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_digest(folder: Path) -> dict[str, str]:
    """Record the sha256 of every file in the folder (recursively) in digest.json."""
    files = {p.relative_to(folder).as_posix(): sha256_file(p)
             for p in sorted(folder.rglob("*")) if p.is_file() and p.name != DIGEST}
    (folder / DIGEST).write_text(json.dumps(asdict(DigestRecord(FORMAT_VERSION, files)),
                                            indent=2, sort_keys=True))
    return files


def checkpoint_digest(folder: str | Path) -> str:
    """One sha256 for the whole checkpoint (over digest.json), once every file matches it: the
    `longmix.digest` that registry versions, approvals and deployments name."""
    folder = Path(folder)
    verify_digest(folder)
    return hashlib.sha256((folder / DIGEST).read_bytes()).hexdigest()


def verify_digest(folder: Path) -> dict[str, str]:
    """Check each file against digest.json; raise CheckpointError naming the first bad file."""
    digest_path = folder / DIGEST
    if not digest_path.is_file():
        raise CheckpointError(f"{folder}: no {DIGEST}; refusing an unverifiable checkpoint")
    try:
        record = json.loads(digest_path.read_text())
        files = record["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{digest_path}: unreadable digest ({e})") from e
    for name in REQUIRED:
        if name not in files:
            raise CheckpointError(f"{folder}: {DIGEST} does not cover required file {name}")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {DIGEST} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise CheckpointError(f"{path}: sha256 {actual[:12]}… does not match the recorded "
                                  f"{expected[:12]}… (tampered or truncated)")
    return files


def save_checkpoint(folder: str | Path, model: Transformer, tokenizer: Tokenizer,
                    extra_files: dict[str, bytes] | None = None) -> dict[str, str]:
    """Write the checkpoint atomically: into a temporary sibling folder, then renamed."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        if model.cfg.tie_embeddings:
            state.pop("lm_head.weight")  # the same storage as tok_emb.weight
        save_file(state, tmp / WEIGHTS, metadata={"format": "longmix", "version": str(FORMAT_VERSION)})
        (tmp / CONFIG).write_text(json.dumps(model.cfg.to_dict(), indent=2, sort_keys=True))
        tokenizer.save(tmp / TOKENIZER)
        for name, data in (extra_files or {}).items():
            target = tmp / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        files = write_digest(tmp)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return files
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def load_checkpoint(folder: str | Path, device: str | torch.device = "cpu"
                    ) -> tuple[Transformer, Tokenizer]:
    folder = Path(folder)
    verify_digest(folder)
    try:
        cfg = ModelConfig.from_dict(json.loads((folder / CONFIG).read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{folder / CONFIG}: {e}") from e
    tokenizer = Tokenizer.from_file(folder / TOKENIZER)
    try:
        state = load_file(folder / WEIGHTS, device=str(device))
    except SafetensorError as e:
        raise CheckpointError(f"{folder / WEIGHTS}: {e}") from e
    model = Transformer(cfg).to(device)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if cfg.tie_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise CheckpointError(f"{folder / WEIGHTS}: missing tensors {missing}, unexpected {unexpected}")
    return model, tokenizer
