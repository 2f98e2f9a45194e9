"""What each registry component computes, as torch modules: the adapters that load a diffusers/transformers module
from its checkpoint and give it a tensors-only signature (`adapters`), Qwen-Image's rotary tables in real
arithmetic (`qwen_rope`), a LoRA merged into the weights (`lora_merge`) and FP8 linears (`fp8`).

export/ turns these modules into ONNX and TensorRT plans; model_repository/ serves them in torch (GPU profile) or
calls their exports. This package imports neither: both build on it.
"""
