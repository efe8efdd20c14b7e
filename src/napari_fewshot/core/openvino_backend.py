"""Models on OpenVINO's CPU runtime: converted once per weights file, cached on disk, compiled per runtime.

A torch module is converted (``openvino.convert_model``) the first time its
weights are seen and saved as OpenVINO IR (an ``.xml`` graph and a ``.bin`` of
float32 weights; reading them runs no code) in the user's cache folder, under a
name holding the weights' digest and OpenVINO's version: a later process, or a
later run, compiles the saved file in a second or two instead of converting again,
and new weights or a new OpenVINO make a new file.  Compiled blobs are cached by
OpenVINO itself (``CACHE_DIR``) next to them.

At ``int8`` the converted trunk is quantized by NNCF's post-training quantization,
calibrated on slices of the package's own sample CT
(:mod:`~napari_fewshot.core.calibration`), once per weights file, and kept the same
way: its name also holds NNCF's version and the calibration's digest.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import threading
import warnings
from importlib import metadata
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .calibration import calibration_digest, calibration_slices
from .cancel import CancelCheck, check_cancel
from .features import encoder_fingerprint
from .runtime import Decoder, Runtime, cpu_flags, runs_natively
from .user_cache import cache_writable, not_cached, save_in_cache, user_cache_folder

if TYPE_CHECKING:
    import openvino

log = logging.getLogger(__name__)

#: The index of converted models in :func:`model_folder` (a JSON object: a model's name and OpenVINO's version to its
#: ``.xml`` file's name), for :func:`is_converted` to answer without reading weights.
CONVERTED_FILE = "converted.json"
#: What is said when converted models cannot be kept on disk, and how to give them a folder.
_NOT_KEPT, _ADVICE = "converted models are not cached on disk", "set NAPARI_FEWSHOT_CACHE to a writable folder"


def openvino_version() -> str:
    import openvino

    return openvino.get_version()


def model_folder() -> Path:
    """Where converted models are kept: ``<user cache>/openvino``."""
    return user_cache_folder("openvino")


def converted_model(
    module: nn.Module, example: Sequence[torch.Tensor], name: str, digest: str, dynamic_batch: bool = False,
    calibration: torch.Tensor | None = None,
) -> Path | openvino.Model:
    """The OpenVINO IR (``.xml``) of ``module``, converted on first use and kept in :func:`model_folder`.

    ``digest`` identifies the weights; the file name holds it and OpenVINO's
    version.  ``example``: inputs to trace with; with ``dynamic_batch`` their first
    dimension is left free, otherwise the model takes exactly their shapes.  With
    ``calibration`` (inputs shaped as ``example``'s one input, one per row) the
    converted model is quantized to int8 (:func:`quantized`), and the name also
    holds NNCF's version and the calibration's digest.  The files are written under
    temporary names and renamed (the ``.xml`` last), so a reader never sees half a
    model.  Where the cache folder cannot hold them (a read-only or full disk, a
    file in its place: one warning line), the converted ``openvino.Model`` itself is
    returned, to compile from memory: converted again by the next process, never a
    reason to fall back to torch.
    """
    import openvino

    identity = f"{digest}:{openvino_version()}"
    if calibration is not None:  # NNCF's version read without importing it (seconds), for a cached model
        identity += f":nncf {metadata.version('nncf')}:{calibration_digest(calibration)}"
        name += "-int8"
    tag = hashlib.blake2b(identity.encode(), digest_size=10).hexdigest()
    path = model_folder() / f"{name}-{tag}.xml"
    if path.is_file() and path.with_suffix(".bin").is_file():
        _note_converted(name, path)
        return path
    keep = cache_writable(path, _NOT_KEPT, _ADVICE)
    with _one_at_a_time(path) if keep else contextlib.nullcontext():
        if keep and path.is_file() and path.with_suffix(".bin").is_file():  # another process made it meanwhile
            _note_converted(name, path)
            return path
        where = f"once for these weights; kept in {path.parent}" if keep else "in memory, for this process"
        if calibration is None:
            log.warning("converting %s to OpenVINO (%s)", name, where)
            shapes = [openvino.PartialShape([-1 if dynamic_batch and i == 0 else n for i, n in enumerate(x.shape)])
                      for x in example]
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the tracer's notes on the Python values it fixes: meant
                model = openvino.convert_model(module.eval(), example_input=tuple(example), input=shapes)
        else:
            source = converted_model(module, example, name.removesuffix("-int8"), digest, dynamic_batch)
            log.warning("quantizing %s to int8 on %d calibration slices (%s)", name.removesuffix("-int8"),
                        len(calibration), where)
            model = quantized(openvino.Core().read_model(source) if isinstance(source, Path) else source, calibration)
        if not keep:
            return model
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=path.parent))
            try:
                openvino.save_model(model, str(staging / path.name), compress_to_fp16=False)
                (staging / path.name).with_suffix(".bin").replace(path.with_suffix(".bin"))
                (staging / path.name).replace(path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        except (OSError, RuntimeError) as error:  # a disk that fills up while saving (OpenVINO raises RuntimeError)
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            not_cached(path.parent, _NOT_KEPT, f"{path}: {reason}", _ADVICE)
            return model
        _note_converted(name, path)
        return path


@contextlib.contextmanager
def _one_at_a_time(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path``'s ``.lock`` beside it while the model is made: a second process (the
    widget's preparing one, a test worker) waits for the first, then finds the files instead of converting too.
    Without ``fcntl`` (Windows) or a lock file, each converts, as before (the files are still written whole)."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(path.with_suffix(".lock"), "a")  # noqa: SIM115 - closed below
    except (ImportError, OSError):
        yield
        return
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _converted_key(name: str) -> str:
    """The key of a model's name in :data:`CONVERTED_FILE`: the name and OpenVINO's version (read without importing
    it)."""
    return f"{name} openvino {metadata.version('openvino')}"


def _note_converted(name: str, path: Path) -> None:
    """Remember in :data:`CONVERTED_FILE` that ``name`` (a model's name, not its weights) was last kept at ``path``."""
    index = model_folder() / CONVERTED_FILE
    kept = _converted()
    if kept.get(_converted_key(name)) != path.name:
        kept[_converted_key(name)] = path.name
        save_in_cache(index, lambda temporary: temporary.write_text(json.dumps(kept, indent=1)),
                      "the converted models' index")


def _converted() -> dict[str, str]:
    """:data:`CONVERTED_FILE`'s names and files (empty when it cannot be read)."""
    try:
        data = json.loads((model_folder() / CONVERTED_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}


def is_converted(name: str) -> bool:
    """Whether the model named ``name`` (``litemedsam-trunk``, ``tiny-trunk-int8``) was converted by this OpenVINO and
    its files are in :func:`model_folder`: no import, no weights read (new weights of the same name are not seen)."""
    kept = _converted().get(_converted_key(name))
    path = model_folder() / kept if kept else None
    return path is not None and path.is_file() and path.with_suffix(".bin").is_file()


def quantized(model: openvino.Model, calibration: torch.Tensor) -> openvino.Model:
    """``model`` (one input) quantized to int8 by NNCF's post-training quantization, its activations' ranges
    measured on ``calibration`` (one input per row); as a transformer (its softmax and norms kept in float)."""
    import nncf

    dataset = nncf.Dataset([row[None].contiguous().numpy() for row in calibration])
    return nncf.quantize(model, dataset, subset_size=len(calibration), model_type=nncf.ModelType.TRANSFORMER)


def compiled_model(
    module: nn.Module, example: Sequence[torch.Tensor], name: str, digest: str, runtime: Runtime, *,
    throughput: bool, dynamic_batch: bool = False, calibration: torch.Tensor | None = None,
):
    """``module`` (:func:`converted_model`, quantized with ``calibration``) compiled for the CPU at ``runtime``'s
    precision and threads.

    ``throughput``: several inference streams share the threads (for many slices,
    one per request); otherwise one request uses them all (for one batched call).
    A cached file that no longer compiles (damaged) is converted again, once.
    """
    path = converted_model(module, example, name, digest, dynamic_batch, calibration)
    if not isinstance(path, Path):  # converted in memory: nothing on disk to be damaged
        return _compile(path, runtime, throughput)
    try:
        return _compile(path, runtime, throughput)
    except RuntimeError as error:
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        log.warning("%s does not compile (%s); converting it again", path, reason)
        path.unlink(missing_ok=True)
        path = converted_model(module, example, name, digest, dynamic_batch, calibration)
        return _compile(path, runtime, throughput)


def _compile(model: Path | openvino.Model, runtime: Runtime, throughput: bool):
    """``model`` (a saved ``.xml`` path, or an ``openvino.Model`` converted in memory) compiled for the CPU."""
    import openvino

    config = {  # OpenVINO's names: f32, bf16, f16; an int8 model's layers that are not quantized run at f32
        "INFERENCE_PRECISION_HINT": "f32" if runtime.precision == "int8" else runtime.precision,
        "INFERENCE_NUM_THREADS": runtime.threads,
        "PERFORMANCE_HINT": "THROUGHPUT" if throughput else "LATENCY",
    }
    if isinstance(model, Path):  # compiled blobs are kept beside the saved models
        config["CACHE_DIR"] = str(model_folder() / "compiled")
        model = str(model)
    return openvino.Core().compile_model(model, "CPU", config)


class _Trunk(nn.Module):
    """An encoder's trunk as a module of its own (what is converted)."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, slices: torch.Tensor) -> torch.Tensor:
        return self.encoder.trunk(slices)


class OpenVINOTrunk:
    """An encoder's trunk on OpenVINO: ``trunk(slices [N, 3, S, S] in [0, 1], cancel) -> [N, C, h, w]`` float32.

    Converted for one slice at a time (the trunks fix their batch when traced), and
    at ``int8`` quantized on :func:`~napari_fewshot.core.calibration.calibration_slices`;
    slices go through a queue of inference requests that OpenVINO runs in
    parallel streams, and ``cancel`` is asked before each slice starts.
    """

    def __init__(self, encoder: nn.Module, runtime: Runtime) -> None:
        import openvino

        if not runs_natively(runtime.precision, cpu_flags()):
            log.warning("this CPU has no %s instructions; encoding at f32", runtime.precision)
            runtime = runtime.exact()
        self.runtime, self.input_size = runtime, encoder.input_size
        example = torch.zeros(1, 3, encoder.input_size, encoder.input_size)
        calibration = calibration_slices(encoder.input_size) if runtime.precision == "int8" else None
        model = compiled_model(_Trunk(encoder), [example], f"{encoder.name}-trunk", encoder_fingerprint(encoder), runtime,
                               throughput=True, calibration=calibration)
        self.requests = int(model.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        self._queue = openvino.AsyncInferQueue(model, self.requests)
        self._lock = threading.Lock()

    def __call__(self, slices: torch.Tensor, cancel: CancelCheck | None = None) -> torch.Tensor:
        inputs = slices.float().contiguous().numpy()
        outputs: list[np.ndarray | None] = [None] * len(inputs)

        def keep(request, index: int) -> None:
            outputs[index] = request.get_output_tensor(0).data.copy()

        with self._lock:
            self._queue.set_callback(keep)
            try:
                for index in range(len(inputs)):
                    check_cancel(cancel)
                    self._queue.start_async({0: inputs[index : index + 1]}, index)
            finally:
                self._queue.wait_all()
        return torch.from_numpy(np.concatenate(outputs))

    def batch_size(self) -> int:
        """Slices per batch handed over: two per inference request, so every stream stays busy."""
        return 2 * self.requests


class OpenVINODecoder:
    """``logits(embeddings [N, 256, 64, 64], boxes [N, 1, 4]) -> [N, 1, 256, 256]`` of a box-prompted decoder
    module, on OpenVINO at float32 (any ``N``)."""

    def __init__(self, module: nn.Module, digest: str, runtime: Runtime) -> None:
        example = [torch.zeros(2, 256, 64, 64), torch.tensor([[[8.0, 8.0, 64.0, 64.0]], [[0.0, 0.0, 255.0, 255.0]]])]
        self._model = compiled_model(module, example, "litemedsam-box-decoder", digest, runtime.exact(),
                                     throughput=False, dynamic_batch=True)
        self._lock = threading.Lock()

    def __call__(self, embeddings: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        with self._lock:
            logits = self._model((embeddings.float().contiguous().numpy(), boxes.float().contiguous().numpy()))[0]
        return torch.from_numpy(np.array(logits))


class OpenVINOBackend:
    """OpenVINO on the CPU: bfloat16 where the CPU has it (float32 else), int8 when asked; the decoder at float32."""

    name, label = "openvino", "OpenVINO"
    precisions = {"cpu": ("bf16", "f32", "int8")}

    def trunk(self, encoder: nn.Module, runtime: Runtime) -> OpenVINOTrunk:
        return OpenVINOTrunk(encoder, runtime)

    def decoder(self, module: nn.Module, digest: str, runtime: Runtime) -> Decoder:
        return OpenVINODecoder(module, digest, runtime)
