"""Training state for exact resumption, stored inside a checkpoint folder under training_state/.

A resumed run needs more than the weights: the optimizer's moments, the data position and
counters, and every RNG a training step draws from. Tensors go to safetensors and everything else
to JSON, so restoring never unpickles: a checkpoint from elsewhere cannot run code on load.
The learning-rate schedule is a pure function of the step (workers.train.loop.lr_at), so there is
no scheduler object to save.

Layout (relative to the checkpoint folder; model.checkpoint's digest.json covers both files):
  training_state/state.json             TrainingState, optimizer class, param_groups, parameter
                                        shapes and non-tensor per-parameter state, Python and
                                        numpy RNG states, the names of the saved generators
  training_state/optimizer.safetensors  state.<param_index>.<name>  optimizer tensors (exp_avg, ...)
                                        rng.torch_cpu, rng.cuda.<device>, generator.<name>
                                        RNG states, uint8 (n,)
"""

from __future__ import annotations

import dataclasses
import json
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

FORMAT_VERSION = 1
STATE_JSON = "training_state/state.json"
TENSORS = "training_state/optimizer.safetensors"


class TrainingStateError(ValueError):
    """The saved training state is incomplete, or does not fit the optimizer it is loaded into."""


@dataclass
class TrainingState:
    step: int = 0  # the next optimizer step to run
    epoch: int = 0
    batches_done_in_epoch: int = 0  # data position: batches of `epoch` already consumed
    tokens_seen: int = 0
    seed: int = 0
    extra: dict = field(default_factory=dict)  # plain JSON: stage, seq_len, expert loads as lists


def training_state_files(state: TrainingState, optimizer: torch.optim.Optimizer,
                         generators: dict[str, torch.Generator] | None = None) -> dict[str, bytes]:
    """The files to pass as save_checkpoint(..., extra_files=...); call right after a step."""
    generators = generators or {}
    saved = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    per_param: dict[str, dict] = {}
    for index, values in saved["state"].items():
        entry = {"tensors": [], "values": {}}
        for name, value in values.items():
            if torch.is_tensor(value):  # AdamW: exp_avg, exp_avg_sq (param shape), step ()
                tensors[f"state.{index}.{name}"] = value.detach().cpu().contiguous()
                entry["tensors"].append(name)
            else:
                entry["values"][name] = value
        per_param[str(index)] = entry

    tensors["rng.torch_cpu"] = torch.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for device, rng in enumerate(cuda_states):
        tensors[f"rng.cuda.{device}"] = rng
    for name, generator in generators.items():
        tensors[f"generator.{name}"] = generator.get_state()

    py_version, py_internal, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    record = {
        "format_version": FORMAT_VERSION,
        "training": dataclasses.asdict(state),
        "optimizer": {
            "class": type(optimizer).__name__,
            "param_shapes": [list(p.shape) for p in _params(optimizer)],
            "param_groups": saved["param_groups"],  # hyper-parameters + param index lists
            "state": per_param,
        },
        "rng": {
            "python": {"version": py_version, "internal": list(py_internal),
                       "gauss_next": py_gauss},
            "numpy": {"name": np_name, "keys": np_keys.tolist(), "pos": int(np_pos),
                      "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_gauss)},
            "cuda_devices": len(cuda_states),
            "generators": sorted(generators),
        },
    }
    try:
        text = json.dumps(record, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise TrainingStateError(f"{STATE_JSON}: cannot be written as JSON ({e}); "
                                 f"TrainingState.extra and optimizer hyper-parameters must be "
                                 f"plain JSON values (tensor.tolist() for tensors)") from e
    return {TENSORS: save(tensors, metadata={"format": "longmix-training-state"}),
            STATE_JSON: text.encode()}


def restore_training_state(folder: str | Path, optimizer: torch.optim.Optimizer,
                           generators: dict[str, torch.Generator] | None = None) -> TrainingState:
    """Load the optimizer state, set the global RNGs and `generators`; return the TrainingState.

    The caller has verified the checkpoint's digests (model.checkpoint.load_checkpoint). Everything
    is checked before anything is changed, so a refused restore leaves the optimizer untouched.
    """
    folder, generators = Path(folder), generators or {}
    json_path, tensors_path = folder / STATE_JSON, folder / TENSORS
    record = _read_record(json_path)
    try:
        tensors = load_file(tensors_path, device="cpu")
    except (FileNotFoundError, SafetensorError) as e:
        raise TrainingStateError(f"{tensors_path}: unreadable ({e})") from e
    try:
        saved_opt, rng = record["optimizer"], record["rng"]
        _check_keys(tensors_path, tensors, _expected_keys(saved_opt, rng))
        _check_fits(json_path, optimizer, saved_opt)
        missing = sorted(set(generators) - set(rng["generators"]))
        unsaved = sorted(set(rng["generators"]) - set(generators))
        if missing or unsaved:  # silently skipping either would break exactness
            raise TrainingStateError(f"{json_path}: generators {missing} were not saved, and saved "
                                     f"generators {unsaved} were not passed to restore")
        state = TrainingState(**record["training"])
        py, npr = rng["python"], rng["numpy"]
        py_state = (py["version"], tuple(py["internal"]), py["gauss_next"])
        np_state = (npr["name"], np.asarray(npr["keys"], dtype=np.uint32), npr["pos"],
                    npr["has_gauss"], npr["cached_gaussian"])  # keys: (624,) uint32
        optimizer.load_state_dict(_optimizer_state_dict(optimizer, saved_opt, tensors))
    except (KeyError, TypeError) as e:
        raise TrainingStateError(f"{json_path}: malformed training state ({e!r})") from e

    torch.set_rng_state(tensors["rng.torch_cpu"])
    _restore_cuda_rngs(tensors, rng["cuda_devices"])
    random.setstate(py_state)
    np.random.set_state(np_state)
    for name, generator in generators.items():
        generator.set_state(tensors[f"generator.{name}"])
    return state


def _params(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    # the order optimizer.state_dict() numbers them in
    return [p for group in optimizer.param_groups for p in group["params"]]


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TrainingStateError(f"{path}: unreadable ({e})") from e
    if not isinstance(record, dict) or record.get("format_version") != FORMAT_VERSION:
        raise TrainingStateError(f"{path}: not a training state of format version {FORMAT_VERSION}")
    return record


def _expected_keys(saved_opt: dict, rng: dict) -> set[str]:
    keys = {f"state.{index}.{name}" for index, entry in saved_opt["state"].items()
            for name in entry["tensors"]}
    keys |= {"rng.torch_cpu"} | {f"rng.cuda.{d}" for d in range(rng["cuda_devices"])}
    return keys | {f"generator.{name}" for name in rng["generators"]}


def _check_keys(path: Path, tensors: dict[str, torch.Tensor], expected: set[str]) -> None:
    missing, unexpected = sorted(expected - set(tensors)), sorted(set(tensors) - expected)
    if missing or unexpected:
        raise TrainingStateError(f"{path}: missing tensors {missing}, "
                                 f"unexpected tensors {unexpected}")


def _check_fits(path: Path, optimizer: torch.optim.Optimizer, saved_opt: dict) -> None:
    if saved_opt["class"] != type(optimizer).__name__:
        raise TrainingStateError(f"{path}: saved for {saved_opt['class']}, "
                                 f"not {type(optimizer).__name__}")
    shapes, saved_shapes = [list(p.shape) for p in _params(optimizer)], saved_opt["param_shapes"]
    if len(shapes) != len(saved_shapes):
        raise TrainingStateError(f"{path}: the optimizer has {len(shapes)} parameters, the saved "
                                 f"state {len(saved_shapes)} (another model or parameter grouping)")
    for index, (shape, saved) in enumerate(zip(shapes, saved_shapes)):
        if shape != saved:
            raise TrainingStateError(f"{path}: parameter {index} has shape {shape}, saved {saved}")
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    saved_sizes = [len(g["params"]) for g in saved_opt["param_groups"]]
    if sizes != saved_sizes:
        raise TrainingStateError(f"{path}: parameter group sizes {sizes}, saved {saved_sizes}")


def _optimizer_state_dict(optimizer: torch.optim.Optimizer, saved_opt: dict,
                          tensors: dict[str, torch.Tensor]) -> dict:
    state = {int(index): {**entry["values"],
                          **{name: tensors[f"state.{index}.{name}"] for name in entry["tensors"]}}
             for index, entry in saved_opt["state"].items()}
    # JSON turned tuples (AdamW's betas) into lists; give each value back the current group's type
    groups = [{k: tuple(v) if isinstance(current.get(k), tuple) else v for k, v in saved.items()}
              for saved, current in zip(saved_opt["param_groups"], optimizer.param_groups)]
    # Optimizer.load_state_dict casts the tensors to each parameter's dtype and device
    # (keeping AdamW's `step` float32), so CPU float32 copies are all it needs
    return {"state": state, "param_groups": groups}


def _restore_cuda_rngs(tensors: dict[str, torch.Tensor], n_saved: int) -> None:
    n_here = torch.cuda.device_count() if torch.cuda.is_available() else 0
    for device in range(min(n_saved, n_here)):
        torch.cuda.set_rng_state(tensors[f"rng.cuda.{device}"], device)
    if n_saved > n_here:
        warnings.warn(f"{n_saved} CUDA RNG states were saved but {n_here} device(s) are visible; "
                      f"GPU randomness after the resume will differ from an uninterrupted run",
                      stacklevel=3)


def read_training_state(folder: str | Path) -> TrainingState:
    """The TrainingState of a checkpoint alone (no optimizer, no RNG): for reports."""
    return TrainingState(**_read_record(Path(folder) / STATE_JSON)["training"])
