"""Files that must never be seen half-written: checkpoints, the resume state, results, metrics.

Off the reading path: read it when you need to know what a run leaves in its output folder, or how a
killed run resumes. A run's folder (--out) holds:
  step_NNNNNN/            one complete checkpoint per save (the last SNAPSHOTS_KEPT are kept):
    model.safetensors       the weights, the model's config in the safetensors metadata (load_weights.load_meter)
    optimizer.safetensors   AdamW's exp_avg, exp_avg_sq and step, by parameter name
    training_state.json     step, flags, samples seen (finetune.py adds its dev history), the SHA-256 of each
                            .safetensors file beside it
    tokenizer.json|vocab.txt, answers.json   what predict.py needs beside the weights
  model.safetensors, optimizer.safetensors, training_state.json   hard links to the latest snapshot
  best/                   finetune.py: the model with the best dev accuracy so far (and its checksum)

    python -c "import checkpoints; print(checkpoints.resolve_checkpoint('out/pretrain_demo'))"   # after a demo

Every write goes to a temporary name first and is renamed into place (`atomic_path`), so a crash or a
SIGTERM at any moment leaves the previous file, or the previous checkpoint folder, whole; a checkpoint folder
that cannot be written whole (a full disk) is removed. A file damaged later (cut short, a flipped bit) no longer
matches its checksum: --resume then passes over its snapshot to the newest whole one, and load_weights.py and
predict.py refuse it in one line. Nothing here loads a pickle: weights and optimizer state are safetensors,
everything else JSON.

Choices, as databases make them:
- The temporary is `<name>.<host>.<pid>-<random>.tmp` in the destination's folder: two writers of one file
  (two processes caching the same label file) never share a temporary, and the rename is the commit, so a
  reader sees the old file or the new one, whole.
- The temporary is flushed to the disk before the rename and the folder after it: a power cut leaves the old
  file or the new one, never a renamed file with no bytes in it.
- A temporary left by a killed writer is removed by the next write into the same folder, once the process its
  name gives is no longer running on this machine; a live writer's is never touched.
"""

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import socket

from safetensors.torch import load_file, save_file

SNAPSHOTS_KEPT = 2  # step_NNNNNN/ folders kept beside the latest checkpoint
RESUME_MUST_MATCH = ["config", "batch", "micro_batch", "steps", "lr", "seed", "image_size", "max_len"]  # what the draws depend on
STATE_FILE = "training_state.json"  # in every checkpoint folder: the training state and the files' checksums
RESUME_FILES = ["model.safetensors", "optimizer.safetensors"]  # what --resume reads from a snapshot


# ----------------------------------------------------------------------------------------------
# Atomic writes: the one helper every output file goes through


TEMPORARY = re.compile(r".+\.(?P<host>[\w-]+)\.(?P<pid>\d+)-[0-9a-f]{8}\.tmp")


def this_host():
    """The machine's name as it appears in temporary names."""
    return re.sub(r"[^\w-]", "_", socket.gethostname())


def temporary_name(path):
    """`path`.HOST.PID-RANDOM.tmp: beside `path`, unique to this writer, and naming the process that writes it."""
    return f"{path}.{this_host()}.{os.getpid()}-{secrets.token_hex(4)}.tmp"


def process_alive(pid):
    """True while a process of this id runs on this machine (another user's included)."""
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True


def remove(path):
    """Remove a file or a folder; nothing when it is already gone."""
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)


def remove_dead_temporaries(folder):
    """Remove the temporaries in `folder` whose writer, a process of this machine, is no longer running."""
    host = this_host()
    for name in os.listdir(folder):
        match = TEMPORARY.fullmatch(name)
        if match and match["host"] == host and not process_alive(int(match["pid"])):
            with contextlib.suppress(PermissionError):  # another user's, in a shared folder
                remove(os.path.join(folder, name))


def flush_to_disk(path):
    """fsync one file, or one folder's list of names (not the files it names)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def flush_tree_to_disk(path):
    """fsync a file, or a folder and everything in it."""
    if os.path.isdir(path):
        for name in os.listdir(path):
            flush_tree_to_disk(os.path.join(path, name))
    flush_to_disk(path)


def replace(temporary, path):
    """Rename `temporary` onto `path`. A folder that `path` already is goes aside first (a rename cannot
    replace a folder that holds files) and is removed after."""
    if os.path.isdir(temporary) and os.path.isdir(path):
        aside = temporary_name(path)
        os.replace(path, aside)
        os.replace(temporary, path)
        remove(aside)
    else:
        os.replace(temporary, path)


@contextlib.contextmanager
def atomic_path(path):
    """A temporary path beside `path` for a file or a folder, flushed to the disk and renamed onto `path` when
    the block ends without an error, removed when it ends with one."""
    folder = os.path.dirname(os.path.abspath(path))
    remove_dead_temporaries(folder)
    temporary = temporary_name(path)
    try:
        yield temporary
        flush_tree_to_disk(temporary)
        replace(temporary, path)
    finally:
        remove(temporary)  # already renamed, unless the block failed
    flush_to_disk(folder)  # the new name


@contextlib.contextmanager
def atomic_write(path, mode="w"):
    """A file to write in place of `path`, which it replaces in one rename when the block ends."""
    with atomic_path(path) as temporary, open(temporary, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as file:
        yield file


def write_json(path, value):
    with atomic_write(path) as file:
        json.dump(value, file, ensure_ascii=False, indent=1)
        file.write("\n")


def write_jsonl(path, rows):
    with atomic_write(path) as file:
        file.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def read_json(path):
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def save_model(model, path, metadata=None):
    """The model as safetensors, its config in the metadata (what load_weights.load_meter reads back)."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in model.state_dict().items()}
    info = {"format": "ko-meter", "config": json.dumps(model.cfg.to_dict()), **(metadata or {})}
    with atomic_path(path) as temporary:
        save_file(state, temporary, metadata=info)


# ----------------------------------------------------------------------------------------------
# Checksums: telling a whole file from a damaged one


def file_checksum(path):
    """SHA-256 of a file's bytes, as hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_checksum(path):
    """Refuse, in one line, a file whose bytes differ from the checksum that the training_state.json beside it
    recorded when it was saved. A file with no checksum recorded (not a checkpoint's) passes."""
    state_path = os.path.join(os.path.dirname(os.path.abspath(path)), STATE_FILE)
    if not os.path.isfile(state_path):
        return
    expected = read_json(state_path).get("checksums", {}).get(os.path.basename(path))
    if expected is not None and file_checksum(path) != expected:
        raise ValueError(f"{path}: damaged file: its SHA-256 is not the one {STATE_FILE} recorded when it was "
                         "saved (cut short or changed since)")


# ----------------------------------------------------------------------------------------------
# Lookups: where a checkpoint is, and the tokenizer that goes with it


def resolve_checkpoint(path):
    """A model.safetensors file, or the one in a run's folder (its latest checkpoint)."""
    path = str(path)
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return path


def copy_tokenizer(source, out_dir):
    """Copy the tokenizer file (data.Tokenizer.source) into OUT, so that a checkpoint folder is self-contained."""
    copy = os.path.join(out_dir, "vocab.txt" if source.endswith(".txt") else "tokenizer.json")
    if os.path.abspath(source) != os.path.abspath(copy):
        shutil.copy2(source, copy)
    return copy


# ----------------------------------------------------------------------------------------------
# Optimizer state by parameter name


def optimizer_tensors(optimizer):
    """AdamW state flattened by parameter name: NAME.exp_avg, NAME.exp_avg_sq, NAME.step."""
    tensors = {}
    for group in optimizer.param_groups:
        for name, parameter in zip(group["names"], group["params"]):
            for key, value in optimizer.state.get(parameter, {}).items():
                tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
    return tensors


def load_optimizer_tensors(optimizer, tensors, path):
    """Inverse of `optimizer_tensors`. A parameter without saved state never had a gradient and stays
    without. The step count goes where torch's own load_state_dict puts it: beside the parameter for the
    fused AdamW, on the CPU otherwise."""
    names = {name for group in optimizer.param_groups for name in group["names"]}
    step_on_device = optimizer.defaults.get("fused") or optimizer.defaults.get("capturable")
    unknown = sorted({key.rpartition(".")[0] for key in tensors} - names)
    if unknown:
        raise ValueError(f"{path}: optimizer state for parameters the model lacks: {', '.join(unknown[:3])}")
    for group in optimizer.param_groups:
        for name, parameter in zip(group["names"], group["params"]):
            keys = [key for key in tensors if key.rpartition(".")[0] == name]
            if keys:
                optimizer.state[parameter] = {
                    key.rpartition(".")[2]: tensors[key] if key.endswith(".step") and not step_on_device
                    else tensors[key].to(parameter.device)
                    for key in keys
                }


# ----------------------------------------------------------------------------------------------
# Checkpoints and resume


def write_folder(folder, model, model_metadata, extra_files=(), json_files=None, tensor_files=None):
    """Write a checkpoint folder under a temporary name and rename it into place: model.safetensors,
    {name: tensors} safetensors files, copies of extra_files, {name: value} JSON files, and training_state.json
    (the one among json_files, or a new one) with the SHA-256 of each safetensors file. A folder that cannot be
    written whole, on a full disk say, is removed and the error raised: the previous checkpoint stays as it was."""
    json_files, tensor_files = dict(json_files or {}), tensor_files or {}
    with atomic_path(folder) as temporary:
        os.makedirs(temporary)
        save_model(model, os.path.join(temporary, "model.safetensors"), model_metadata)
        for name, tensors in tensor_files.items():
            save_file(tensors, os.path.join(temporary, name))
        for path in extra_files:
            shutil.copy2(path, os.path.join(temporary, os.path.basename(path)))
        checksums = {name: file_checksum(os.path.join(temporary, name))
                     for name in ["model.safetensors", *tensor_files]}
        json_files[STATE_FILE] = {**json_files.get(STATE_FILE, {}), "checksums": checksums}
        for name, value in json_files.items():
            write_json(os.path.join(temporary, name), value)
    return folder


def checkpoint_bytes(model):
    """About what one step_NNNNNN/ folder takes on disk: the weights, and AdamW's two moments and step count for
    every parameter that trains."""
    weights = sum(tensor.numel() * tensor.element_size() for tensor in model.state_dict().values())
    moments = sum(2 * parameter.numel() * parameter.element_size() + 4
                  for parameter in model.parameters() if parameter.requires_grad)
    return weights + moments


def snapshot_folders(out_dir):
    """The step_NNNNNN/ folders of a run, newest first (temporary ones left out)."""
    names = [name for name in os.listdir(out_dir) if re.fullmatch(r"step_\d+", name)] if os.path.isdir(out_dir) else []
    return [os.path.join(out_dir, name) for name in sorted(names, key=lambda name: int(name[5:]), reverse=True)]


def save_checkpoint(out_dir, step, model, optimizer, state, extra_files=()):
    """Write step_NNNNNN/ (model, optimizer, training_state.json, extra files), then point the top-level
    OUT/ files at it (hard links renamed into place, training_state.json last). Keeps SNAPSHOTS_KEPT."""
    snapshot = os.path.join(out_dir, f"step_{step:06d}")
    write_folder(snapshot, model, {"step": str(step), "max_len": str(state["args"]["max_len"])}, extra_files,
                 json_files={STATE_FILE: {**state, "step": step}},
                 tensor_files={"optimizer.safetensors": optimizer_tensors(optimizer)})
    for name in [*RESUME_FILES, STATE_FILE]:
        with atomic_path(os.path.join(out_dir, name)) as link:
            try:
                os.link(os.path.join(snapshot, name), link)
            except OSError:  # a file system without hard links
                shutil.copy2(os.path.join(snapshot, name), link)
    for old_snapshot in snapshot_folders(out_dir)[SNAPSHOTS_KEPT:]:
        shutil.rmtree(old_snapshot)
    return snapshot


def load_checkpoint(out_dir, model, optimizer):
    """Restore the newest whole snapshot saved by `save_checkpoint` into the model and optimizer; returns its
    training state. A snapshot with a missing or damaged file is passed over, and the line printed says so."""
    passed_over = []
    for folder in snapshot_folders(out_dir):
        try:
            state, model_tensors, optimizer_tensors = read_snapshot(folder)
        except (OSError, ValueError) as error:
            passed_over.append(str(error))
            continue
        if passed_over:
            print(f"resume: passing over {'; '.join(passed_over)}; resuming from {folder}, the newest whole "
                  "snapshot", flush=True)
        model.load_state_dict(model_tensors)
        load_optimizer_tensors(optimizer, optimizer_tensors, os.path.join(folder, "optimizer.safetensors"))
        return state
    if not passed_over:
        raise FileNotFoundError(f"{os.path.join(out_dir, STATE_FILE)}: no checkpoint to resume from")
    raise ValueError(f"no whole checkpoint to resume from in {out_dir} ({'; '.join(passed_over)}); start again "
                     "with --overwrite")


def read_snapshot(folder):
    """(training state, model tensors, optimizer tensors) of a step_NNNNNN/ folder that `check_snapshot` finds whole."""
    state = check_snapshot(folder)
    tensors = []
    for name in RESUME_FILES:
        path = os.path.join(folder, name)
        try:
            tensors.append(load_file(path))
        except Exception as error:  # safetensors raises its own error types for broken headers and short files
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
    return state, *tensors


def check_snapshot(folder):
    """The training state of a step_NNNNNN/ folder whose files are all there and match their checksums; OSError or
    ValueError, in one line, for the first file missing or damaged."""
    state = read_json(os.path.join(folder, STATE_FILE))
    for name in RESUME_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: missing")
        verify_checksum(path)
    return state


def resume(args, model, optimizer):
    """--resume: restore the checkpoint in --out into the model and optimizer, refusing a changed recipe;
    returns the training state (step, and what the script saved beside it)."""
    state = load_checkpoint(args.out, model, optimizer)
    check_resume_args(args, state["args"])
    return state


def check_resume_args(args, saved_args):
    """Resuming is exact only with the same recipe: refuse a changed flag."""
    for name in RESUME_MUST_MATCH:
        if saved_args.get(name) != getattr(args, name):
            raise ValueError(f"--resume: --{name.replace('_', '-')} is {getattr(args, name)} "
                             f"but the saved run used {saved_args.get(name)}")
