"""Other programs' GPT-2 weight formats (OpenAI's TensorFlow checkpoints, Hugging Face's
safetensors), mapped onto gptlab's parameters; gptlab's own format is gptlab.checkpoints."""
