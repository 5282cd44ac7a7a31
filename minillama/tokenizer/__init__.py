"""Tokenizers for the Llama family: SentencePiece, tiktoken (Llama 3), byte-level BPE (tokenizer.json, GGUF)."""
from .base import AddedToken, StreamDecoder, Tokenizer
from .chat import ChatTemplate
from .loading import load_tokenizer, tokenizer_from_gguf

__all__ = ["AddedToken", "ChatTemplate", "StreamDecoder", "Tokenizer", "load_tokenizer", "tokenizer_from_gguf"]
