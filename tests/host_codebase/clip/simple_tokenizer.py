from ._openai import openai

SimpleTokenizer = openai.simple_tokenizer.SimpleTokenizer
