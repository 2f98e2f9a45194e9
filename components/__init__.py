"""What registry components compute, as torch modules: the adapters of modules several families share
(`adapters`, which also finds a family folder's own), a LoRA merged into the weights (`lora_merge`) and FP8
linears (`fp8`).

export/ turns these modules into ONNX and TensorRT plans; model_repository/ serves them in torch (GPU profile) or
calls their exports. This package imports neither: both build on it.
"""
