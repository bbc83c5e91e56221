"""A model repository for NVIDIA Triton Inference Server: the encoder on Triton's ONNX Runtime backend, with dynamic
batching on the GPU, and FP16 patches accepted through an ensemble.

    REPO/sammed3d_encoder/config.pbtxt, 1/model.onnx            FP32 "image" [N,1,128,128,128] -> "embedding"
    REPO/sammed3d_encoder_fp16_cast/config.pbtxt, 1/model.onnx  one ONNX Cast node: FP16 -> FP32
    REPO/sammed3d_encoder_fp16/config.pbtxt, 1/                 ensemble: the Cast, then the encoder

Triton checks every input's data type against its configuration and never casts, and one configuration holds for
all versions of a model: so FP16 is a second model, an ensemble that reuses the encoder (its weights are loaded
once). Clients call sammed3d_encoder with FP32 patches or sammed3d_encoder_fp16 with FP16 patches. The encoder's
ONNX file has a symbolic batch dimension, which Triton's dynamic batching needs. The configurations are written
with Triton's own model-configuration protobuf (`model_config_pb2`, shipped in tritonclient) and checked against
the ONNX files (`check_repository`) before they replace anything; the encoder's and the ensemble's carry the
checkpoint's SHA256 in their parameters, where clients read it (GET /v2/models/NAME/config).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Dict, List, Union

from SAMMed3DLib.backends.onnx_predictor import CHECKPOINT_NAME_KEY, CHECKPOINT_SHA256_KEY, ENCODER_FILE
from SAMMed3DLib.errors import MissingPackages, SAMMed3DError
from SAMMed3DLib.files import temporary_folder
from SAMMed3DLib.serving.encoder import MAX_BATCH
from SAMMed3DLib.serving.protocol import (
    CHECKPOINT_NAME_PARAMETER,
    CHECKPOINT_PARAMETER,
    EMBEDDING,
    ENCODER_MODEL,
    ENCODER_MODEL_FP16,
    IMAGE,
)

CAST_MODEL = "sammed3d_encoder_fp16_cast"
MODELS = (ENCODER_MODEL, CAST_MODEL, ENCODER_MODEL_FP16)
CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"  # in the version folder "1", where Triton's ONNX Runtime backend looks
QUEUE_DELAY_US = 2000  # how long Triton may hold a request to batch it with others
_CAST_INPUT = "image_fp16"
_ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 7: "TYPE_INT64"}  # onnx.TensorProto data types


def require_packages() -> None:
    MissingPackages.require("writing a Triton model repository", "torch,onnx,serve", "torch", "onnx",
                            "onnxruntime", "tritonclient", "google.protobuf")


def model_config_pb2() -> Any:
    """Triton's model-configuration protobuf module. tritonclient ships it as tritonclient/grpc/model_config_pb2.py
    also in its HTTP-only install, whose tritonclient.grpc package refuses to import without grpcio: so the file is
    loaded by itself. Needs protobuf (>= 6.33.5 for tritonclient 2.73's generated code)."""
    name = "tritonclient.grpc.model_config_pb2"
    if name not in sys.modules:
        import tritonclient

        spec = importlib.util.spec_from_file_location(name, Path(tritonclient.__file__).parent / "grpc"
                                                      / "model_config_pb2.py")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except Exception as error:  # protobuf older than the generated code wants: its VersionError
            raise SAMMed3DError(f"cannot load Triton's model configuration from {spec.origin} with this protobuf "
                                f"({error})") from None
        sys.modules[name] = module
    return sys.modules[name]


def export_repository(checkpoint: Union[str, Path], output: Union[str, Path], max_batch: int = MAX_BATCH,
                      instances: int = 1) -> List[Path]:
    """Write the three models of a checkpoint into the Triton model repository `output` (created if needed; other
    models there are left alone, earlier versions of these three replaced); returns their folders."""
    from SAMMed3DLib.backends.onnx_export import export_checkpoint, prepare_output_folder

    require_packages()
    if max_batch < 1 or instances < 1:
        raise SAMMed3DError(f"a batch size and an instance count of at least 1 are needed, not {max_batch} and "
                            f"{instances}")
    output = prepare_output_folder(output)
    with temporary_folder(output / ENCODER_MODEL) as staging:
        export_checkpoint(checkpoint, staging / "onnx")  # checked against torch, at batch 2 too
        _write_models(staging, staging / "onnx" / ENCODER_FILE, max_batch, instances)
        check_repository(staging)
        for name in MODELS:
            if (output / name).exists():
                (output / name).rename(staging / f"old-{name}")
            (staging / name).rename(output / name)
    return [output / name for name in MODELS]


def _write_models(repository: Path, encoder_onnx: Path, max_batch: int, instances: int) -> None:
    import onnx
    from google.protobuf import text_format

    pb2 = model_config_pb2()
    encoder = onnx.load(str(encoder_onnx), load_external_data=False)
    metadata = {entry.key: entry.value for entry in encoder.metadata_props}
    parameters = {CHECKPOINT_PARAMETER: metadata.get(CHECKPOINT_SHA256_KEY, ""),
                  CHECKPOINT_NAME_PARAMETER: metadata.get(CHECKPOINT_NAME_KEY, "")}
    image = [1] + [int(d.dim_value) for d in _tensor(encoder.graph.input, IMAGE).type.tensor_type.shape.dim[2:]]
    embedding = [int(d.dim_value) for d in _tensor(encoder.graph.output, EMBEDDING).type.tensor_type.shape.dim[1:]]

    def tensor(name: str, data_type: str, dims: List[int]) -> Dict[str, Any]:
        return {"name": name, "data_type": pb2.DataType.Value(data_type), "dims": dims}

    gpu = [pb2.ModelInstanceGroup(count=instances, kind=pb2.ModelInstanceGroup.KIND_GPU)]
    configs = {
        ENCODER_MODEL: pb2.ModelConfig(
            name=ENCODER_MODEL, backend="onnxruntime", max_batch_size=max_batch,
            input=[tensor(IMAGE, "TYPE_FP32", image)], output=[tensor(EMBEDDING, "TYPE_FP32", embedding)],
            dynamic_batching=pb2.ModelDynamicBatching(max_queue_delay_microseconds=QUEUE_DELAY_US),
            instance_group=gpu, parameters=_parameters(pb2, parameters)),
        CAST_MODEL: pb2.ModelConfig(
            name=CAST_MODEL, backend="onnxruntime", max_batch_size=max_batch,
            input=[tensor(_CAST_INPUT, "TYPE_FP16", image)], output=[tensor(IMAGE, "TYPE_FP32", image)],
            instance_group=[pb2.ModelInstanceGroup(count=1, kind=pb2.ModelInstanceGroup.KIND_GPU)]),
        ENCODER_MODEL_FP16: pb2.ModelConfig(
            name=ENCODER_MODEL_FP16, platform="ensemble", max_batch_size=max_batch,
            input=[tensor(IMAGE, "TYPE_FP16", image)], output=[tensor(EMBEDDING, "TYPE_FP32", embedding)],
            ensemble_scheduling=pb2.ModelEnsembling(step=[
                pb2.ModelEnsembling.Step(model_name=CAST_MODEL, model_version=-1, input_map={_CAST_INPUT: IMAGE},
                                         output_map={IMAGE: "image_fp32"}),
                pb2.ModelEnsembling.Step(model_name=ENCODER_MODEL, model_version=-1,
                                         input_map={IMAGE: "image_fp32"}, output_map={EMBEDDING: EMBEDDING}),
            ]),
            parameters=_parameters(pb2, parameters)),
    }
    for name, config in configs.items():
        (repository / name / "1").mkdir(parents=True)
        (repository / name / CONFIG_FILE).write_text(text_format.MessageToString(config), encoding="utf-8")
    encoder_onnx.replace(repository / ENCODER_MODEL / "1" / MODEL_FILE)  # the staged export: moved, not copied
    onnx.save(_cast_model(), str(repository / CAST_MODEL / "1" / MODEL_FILE))


def _parameters(pb2: Any, values: Dict[str, str]) -> Dict[str, Any]:
    return {key: pb2.ModelParameter(string_value=value) for key, value in values.items()}


def _cast_model() -> Any:
    """One ONNX Cast node, FP16 "image_fp16" -> FP32 "image", any batch size."""
    import onnx
    from onnx import TensorProto, helper

    from SAMMed3DLib.backends.onnx_export import OPSET
    from SAMMed3DLib.interactive.geometry import PATCH_SIZE

    shape = ["batch", 1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE]
    graph = helper.make_graph(
        [helper.make_node("Cast", [_CAST_INPUT], [IMAGE], to=TensorProto.FLOAT)], "sammed3d_fp16_cast",
        [helper.make_tensor_value_info(_CAST_INPUT, TensorProto.FLOAT16, shape)],
        [helper.make_tensor_value_info(IMAGE, TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def _tensor(values: Any, name: str) -> Any:
    found = [value for value in values if value.name == name]
    if not found:
        raise SAMMed3DError(f"the ONNX file has no tensor {name!r} (it has {', '.join(v.name for v in values)})")
    return found[0]


def read_config(path: Path) -> Any:
    """A config.pbtxt parsed into Triton's ModelConfig; SAMMed3DError naming the file, line and column if not."""
    from google.protobuf import text_format

    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), model_config_pb2().ModelConfig())
    except text_format.ParseError as error:
        raise SAMMed3DError(f"{path}: {error}") from None


def check_repository(repository: Union[str, Path]) -> Dict[str, Any]:
    """Parse every model's config.pbtxt and check what Triton checks when it loads them: each ONNX model's inputs
    and outputs (names, data types, dims with the batch dimension symbolic when max_batch_size > 0), and that each
    ensemble step maps onto its model's tensors. Returns the configurations by model name."""
    import onnx

    repository = Path(repository)
    configs = {path.parent.name: read_config(path) for path in sorted(repository.glob(f"*/{CONFIG_FILE}"))}
    pb2 = model_config_pb2()
    for name, config in configs.items():
        where = repository / name / CONFIG_FILE
        if config.name != name:
            raise SAMMed3DError(f"{where}: names the model {config.name!r}, its folder is {name!r}")
        if config.backend == "onnxruntime":
            model = onnx.load(str(repository / name / "1" / MODEL_FILE), load_external_data=False)
            initializers = {tensor.name for tensor in model.graph.initializer}
            for kind, declared, actual in (("input", config.input, model.graph.input),
                                           ("output", config.output, model.graph.output)):
                actual = [value for value in actual if value.name not in initializers]
                _check_tensors(where, kind, declared, actual, config.max_batch_size, pb2)
        elif config.platform == "ensemble":
            _check_ensemble(where, config, configs)
        else:
            raise SAMMed3DError(f"{where}: neither the onnxruntime backend nor an ensemble")
    return configs


def _check_tensors(where: Path, kind: str, declared: Any, actual: Any, max_batch: int, pb2: Any) -> None:
    if sorted(t.name for t in declared) != sorted(v.name for v in actual):
        raise SAMMed3DError(f"{where}: {kind}s {[t.name for t in declared]}, the ONNX file has "
                            f"{[v.name for v in actual]}")
    for tensor in declared:
        value = next(v for v in actual if v.name == tensor.name)
        data_type = _ONNX_TO_TRITON.get(value.type.tensor_type.elem_type, "another type")
        if pb2.DataType.Name(tensor.data_type) != data_type:
            raise SAMMed3DError(f"{where}: {kind} {tensor.name!r} is {pb2.DataType.Name(tensor.data_type)}, the ONNX "
                                f"file's is {data_type}")
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in value.type.tensor_type.shape.dim]
        if max_batch > 0:
            if not dims or dims[0] != -1:
                raise SAMMed3DError(f"{where}: max_batch_size {max_batch} needs a symbolic first dimension of "
                                    f"{kind} {tensor.name!r}; the ONNX file's dims are {dims}")
            dims = dims[1:]
        if list(tensor.dims) != dims:
            raise SAMMed3DError(f"{where}: {kind} {tensor.name!r} has dims {list(tensor.dims)}, the ONNX file's are "
                                f"{dims}")


def _check_ensemble(where: Path, config: Any, configs: Dict[str, Any]) -> None:
    available = {tensor.name: tensor for tensor in config.input}
    for step in config.ensemble_scheduling.step:
        target = configs.get(step.model_name)
        if target is None:
            raise SAMMed3DError(f"{where}: a step calls the model {step.model_name!r}, which the repository lacks")
        if target.max_batch_size < config.max_batch_size:
            raise SAMMed3DError(f"{where}: max_batch_size {config.max_batch_size} exceeds {step.model_name}'s "
                                f"{target.max_batch_size}")
        inputs = {tensor.name: tensor for tensor in target.input}
        for model_input, source in step.input_map.items():
            if model_input not in inputs or source not in available:
                raise SAMMed3DError(f"{where}: the step into {step.model_name} maps {source!r} to {model_input!r}")
            if available[source].data_type != inputs[model_input].data_type:
                raise SAMMed3DError(f"{where}: {source!r} and {step.model_name}'s {model_input!r} differ in type")
        outputs = {tensor.name: tensor for tensor in target.output}
        for model_output, target_name in step.output_map.items():
            if model_output not in outputs:
                raise SAMMed3DError(f"{where}: {step.model_name} has no output {model_output!r}")
            available[target_name] = outputs[model_output]
    for tensor in config.output:
        if tensor.name not in available or available[tensor.name].data_type != tensor.data_type:
            raise SAMMed3DError(f"{where}: no step produces the output {tensor.name!r} as declared")
